"""What the three CLIs share (hear_ced.common.cli, hear_ced.common.logs), checked through the real CLIs."""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import hear_ced.weights as weights
from hear_ced.cli import main as hear_main
from hear_ced.distill.cli import main as distill_main
from hear_ced.eval.cli import main as eval_main

CLIS = {"hear-ced": hear_main, "ced-distill": distill_main, "ced-eval": eval_main}


@pytest.fixture
def wavs(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"clip{i}.wav")
        sf.write(paths[-1], np.zeros(16000, dtype=np.float32), 16000)
    return [str(p) for p in paths]


def process_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != weights.ENV_WEIGHTS}
    env.update(
        HEAR_CED_CACHE=str(tmp_path / "cache"),
        HF_HOME=str(tmp_path / "hf_home"),
        PYTHONPATH=os.pathsep.join(sys.path),
        **extra,
    )
    return env


def failing_commands(tmp_path: Path, wav: str) -> dict[str, list[str]]:
    """One cheap command per CLI that fails in the command itself (after option parsing)."""
    (tmp_path / "no_logits").mkdir()
    (tmp_path / "no_run").mkdir()
    return {
        "hear-ced": ["tag", wav],
        "ced-distill": ["verify-logits", str(tmp_path / "no_logits")],
        "ced-eval": ["report", str(tmp_path / "no_run")],
    }


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize(
    ("flags", "level"),
    [(["-q"], logging.WARNING), (["-v"], logging.DEBUG), ([], logging.INFO)],
)
def test_quiet_and_verbose_work_after_the_command(cli, flags, level, no_weights, wavs, tmp_path):
    args = failing_commands(tmp_path, wavs[0])[cli]
    result = CliRunner().invoke(CLIS[cli], [*args, *flags])
    assert result.exit_code == 1, result.output
    assert logging.getLogger("hear_ced").level == level  # every CLI's loggers are under it


@pytest.mark.parametrize("cli", CLIS)
def test_every_command_takes_quiet_and_verbose_unless_it_passes_arguments_on(cli):
    for command in CLIS[cli].commands.values():
        names = {opt for param in command.params for opt in param.opts}
        passes_on = command.context_settings.get("ignore_unknown_options", False)
        assert ({"-q", "-v"} <= names) != passes_on, command.name


def test_quiet_before_and_verbose_after_stays_quiet(no_weights, wavs):
    result = CliRunner().invoke(hear_main, ["-q", "tag", wavs[0], "-v"])
    assert result.exit_code == 1
    assert logging.getLogger("hear_ced").level == logging.WARNING


@pytest.mark.parametrize("cli", CLIS)
def test_one_error_format(cli, no_weights, wavs, tmp_path):
    args = failing_commands(tmp_path, wavs[0])[cli]
    result = CliRunner().invoke(CLIS[cli], args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: "), result.output
    assert "Traceback" not in result.output


def test_unreadable_file_in_a_batch_is_an_error_line(small_checkpoint, wavs, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    for extra in ([], ["--timeline"]):
        args = ["tag", wavs[0], str(bad), "--model", small_checkpoint, "--exact", *extra]
        result = CliRunner().invoke(hear_main, args)
        assert result.exit_code == 1
        errors = [line for line in result.output.splitlines() if "bad.wav" in line]
        assert len(errors) == 2, result.output
        assert errors[0].startswith("Error: cannot read audio file")
        assert errors[1].startswith("Error: tagged 1 of 2 files; 1 failed: ")


def test_closed_stdout_ends_quietly(small_checkpoint, wavs, tmp_path):
    """`hear-ced tag ... | head`: the reader is gone before the first line is written."""
    command = [str(Path(sys.executable).parent / "hear-ced"), "tag", *wavs]
    command += ["--model", small_checkpoint, "--exact"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=process_env(tmp_path),
        text=True,
    )
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=300)
    assert stderr == ""
    assert process.returncode == 1


class WarningHub(http.server.BaseHTTPRequestHandler):
    """A Hub that has no such file and sends a warning header, which huggingface_hub logs."""

    def do_HEAD(self):  # noqa: N802 - http.server's naming
        self.send_response(404)
        self.send_header("X-HF-Warning", "notice; the Hub sends a notice")
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


@pytest.fixture
def warning_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WarningHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_third_party_record_printed_once_and_hint_names_the_option(warning_hub, wavs, tmp_path):
    """huggingface_hub's own handler prints its record; the CLI's handler does not repeat it."""
    script = "import sys; from hear_ced.cli import main; main(sys.argv[1:])"
    env = process_env(tmp_path, HF_ENDPOINT=warning_hub)
    env.pop("HF_HUB_OFFLINE", None)
    env.pop(weights.ENV_OFFLINE, None)
    result = subprocess.run(
        [sys.executable, "-c", script, "tag", wavs[0], "-m", "tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.count("the Hub sends a notice") == 1, result.stderr
    assert "Error: no weights for CED-tiny" in result.stderr
    assert "with --model" in result.stderr and "-m/--model" not in result.stderr


def test_finetune_and_eval_hints_name_their_option(no_weights):
    from hear_ced.distill.finetune import init_path
    from hear_ced.eval.hear_run.identity import RunError, weights_file

    with pytest.raises(weights.WeightsNotFoundError, match="with --init;"):
        init_path("mini")
    with pytest.raises(RunError, match="with --model;"):
        weights_file("hear_ced.mini", None)
