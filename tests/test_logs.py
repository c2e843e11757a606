"""``hear_ced.common.logs``: progress in files and on terminals, known third-party noise silenced."""

from __future__ import annotations

import io
import logging
import sys
import warnings

import pytest
import tqdm.std as tqdm_std
from tqdm import tqdm

from hear_ced.common import logs
from hear_ced.eval.hear_run.task_state import run_logged

log = logging.getLogger("hear_ced.distill.progress_test")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def fake_clock(monkeypatch):
    """tqdm's clock, in seconds that the test advances."""
    clock = [0.0]
    monkeypatch.setattr(tqdm_std, "time", lambda: clock[0])
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    return clock


def test_progress_in_a_file_is_a_plain_line_every_interval(fake_clock, caplog):
    caplog.set_level(logging.INFO, logger="hear_ced.distill")
    for _ in logs.progress_bar(range(144), desc="train", unit="batch", logger=log):
        fake_clock[0] += 1
    lines = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert 14 <= len(lines) <= 16  # 144 one-second steps: the start, every 10 s, the end
    assert not any("\r" in line or "\n" in line for line in lines)
    assert lines[1].startswith("train:   7%") and "10/144" in lines[1]
    assert lines[-1].startswith("train: 100%") and "144/144" in lines[-1]


def test_progress_in_a_file_keeps_tqdms_interface(fake_clock, caplog):
    caplog.set_level(logging.INFO, logger="hear_ced.distill")
    with logs.progress_bar(total=4, initial=1, desc="resume", logger=log) as bar:
        bar.update(3)
        bar.set_postfix(loss="0.25", refresh=False)
    start, end = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert "1/4" in start and "4/4" in end and "loss=0.25" in end


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="hear_ced.distill")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = logs.progress_bar(range(3), desc="tty", logger=log)
    assert isinstance(bar, tqdm)
    list(bar)
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_progress_hidden_when_quiet(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="hear_ced.distill")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    for disable, level in ((False, logging.WARNING), (True, logging.INFO)):
        caplog.set_level(level, logger="hear_ced.distill")
        list(logs.progress_bar(range(3), desc="hidden", logger=log, disable=disable))
    assert terminal.getvalue() == "" and not caplog.records


def test_known_third_party_records_are_dropped(capsys):
    logs.configure(0)
    logs.configure(0)  # as after -q/-v on both sides of a command: one filter
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")
    noisy.warning(
        "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "none"
    )
    noisy.warning("a real problem")
    err = capsys.readouterr().err
    assert "gemm_4bit_forward" not in err and err.count("a real problem") == 1


@pytest.mark.parametrize("name", ["huggingface_hub.file_download", "some_library.part"])
def test_a_library_record_is_printed_once(name, capsys, monkeypatch):
    """huggingface_hub prints its records itself; another library's go through the CLI's."""
    import huggingface_hub.utils.logging  # noqa: F401 - gives its loggers their handler

    # The library's own handler only, not what another test may have left on its logger.
    hub = logging.getLogger("huggingface_hub")
    own = [h for h in hub.handlers if type(h) is logging.StreamHandler]
    monkeypatch.setattr(hub, "handlers", own)
    for handler in own:
        monkeypatch.setattr(handler, "stream", sys.stderr)  # the captured one
    logs.configure(0)
    logging.getLogger(name).warning("a library speaks")
    # Both handlers print the bare message: a record printed twice shows as two such lines.
    assert capsys.readouterr().err.splitlines().count("a library speaks") == 1


def test_known_third_party_warnings_are_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs.configure(0)
        warnings.warn("pkg_resources is deprecated as an API. See ...", UserWarning, stacklevel=1)
        warnings.warn("pkg_resources is deprecated as an API.", DeprecationWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [(type(w.message), str(w.message)) for w in caught] == [
        (DeprecationWarning, "pkg_resources is deprecated as an API."),
        (UserWarning, "something else"),
    ]


def test_child_warnings_keep_the_inherited_entries_last():
    assert logs.child_warnings(None) == "ignore:pkg_resources is deprecated as an API:UserWarning"
    assert logs.child_warnings("error").endswith(",error")


STEP = """
import time, warnings
import tqdm.std as tqdm_std
from tqdm import tqdm
warnings.warn("pkg_resources is deprecated as an API. See ...", UserWarning)
for _ in tqdm(range(60)):
    time.sleep(0.02)
warnings.warn("another warning", UserWarning)
"""


def test_heareval_steps_log_without_the_known_warning_and_few_redraws(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    log_file = tmp_path / "step.log"
    run_logged([sys.executable, "-c", STEP], log_file, cwd=tmp_path)
    text = log_file.read_text()
    assert "pkg_resources" not in text and "another warning" in text
    assert "60/60" in text and text.count("\r") <= 3
