"""Logging set-up for the command-line tools.

Library modules only create ``logging.getLogger(__name__)`` and log to it;
whoever runs them decides where the records go. The CLIs call
:func:`configure` once: records go to standard error through ``tqdm.write``,
so they never tear a progress bar, and ``--quiet``/``--verbose`` choose the
level of the project's loggers (other libraries stay at warnings).
huggingface_hub's records, which its own handler prints, are not printed again.

Known third-party noise is silenced by name (:data:`QUIET_RECORDS`,
:data:`QUIET_WARNINGS`), in the CLIs' processes and in the child processes
they start (:func:`child_warnings`). Progress goes through :func:`progress_bar`:
a tqdm bar on a terminal; in a file or pipe, the same tqdm as a plain line
every :data:`PROGRESS_INTERVAL` seconds.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from tqdm import tqdm

PROJECT_LOGGERS = ("hear_ced", "bench")

# Seconds between progress lines in a file or pipe (and between heareval's tqdm
# redraws in its step logs).
PROGRESS_INTERVAL = 10.0

# (logger, start of the message): third-party records that say nothing about the
# project's work.
QUIET_RECORDS = (
    # bitsandbytes on import, on CPUs with AVX512-BF16: a 4-bit matmul kernel from the
    # `kernels` package, which the 8-bit Adam of the training recipes does not use.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)

# (start of the message, category): third-party warnings ignored.
QUIET_WARNINGS = (
    # setuptools >= 81 on every import of pkg_resources: dcase_util and lightning_fabric,
    # which heareval imports.
    ("pkg_resources is deprecated as an API", UserWarning),
)


def _not_noise(record: logging.LogRecord) -> bool:
    """False for a record of :data:`QUIET_RECORDS`."""
    message = str(record.msg)
    return not any(
        record.name == name and message.startswith(start) for name, start in QUIET_RECORDS
    )


def silence_known_noise() -> None:
    """Filter :data:`QUIET_RECORDS` and :data:`QUIET_WARNINGS` in this process."""
    for name, _ in QUIET_RECORDS:
        logging.getLogger(name).addFilter(_not_noise)  # added once, however often called
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)


def child_warnings(inherited: str | None) -> str:
    """``PYTHONWARNINGS`` for a child process: :data:`QUIET_WARNINGS`, then ``inherited``.

    The inherited entries come last, so they take precedence.
    """
    ours = [f"ignore:{message}:{category.__name__}" for message, category in QUIET_WARNINGS]
    return ",".join([*ours, *([inherited] if inherited else [])])


class TqdmHandler(logging.Handler):
    """Writes records to standard error between progress-bar redraws."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm  # on the first record: keeps tqdm out of a CLI's start-up

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def configure(verbosity: int = 0) -> None:
    """Route records to standard error; the project's loggers at the level ``verbosity`` sets.

    -1 (quiet): warnings and errors; 0: progress; 1 (verbose): debug.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, TqdmHandler)]:
        root.removeHandler(old)
    handler = TqdmHandler()
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s")
    )
    root.addHandler(handler)
    # huggingface_hub prints its records with its own handler; as its docs advise, they
    # then stop at it rather than being printed twice.
    logging.getLogger("huggingface_hub").propagate = False
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    silence_known_noise()


class _LogLines(io.TextIOBase):
    """tqdm's output in a file or pipe: each redraw one record of ``logger``.

    tqdm redraws its bar in place with carriage returns, which a log file
    shows as one endless line.
    """

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> int:
        if line := text.strip():
            self.logger.info("%s", line)
        return len(text)


# What :func:`progress_bar` gives, for the functions a bar is passed to.
Progress: TypeAlias = "tqdm"  # imported on first use


def progress_bar(
    iterable: Iterable | None = None,
    *,
    logger: logging.Logger,
    disable: bool = False,
    leave: bool = True,
    **options: Any,
) -> tqdm:
    """The project's progress display: a tqdm bar on a terminal, a plain line of
    ``logger`` every :data:`PROGRESS_INTERVAL` seconds (and at the end) elsewhere.

    Hidden when ``disable`` or when ``logger``'s progress records would be
    (``--quiet``). ``options`` are tqdm's; ``leave`` applies to a terminal's bar only.
    """
    from tqdm import tqdm

    hidden = disable or not logger.isEnabledFor(logging.INFO)
    if hidden or getattr(sys.stderr, "isatty", lambda: False)():
        return tqdm(iterable, disable=hidden, leave=leave, file=sys.stderr, **options)
    lines = _LogLines(logger)
    # position 0: a bar opened inside another moves no cursor in a file
    return tqdm(iterable, file=lines, mininterval=PROGRESS_INTERVAL, ncols=0, position=0, **options)
