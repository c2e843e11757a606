"""Logging set-up for the command-line tools.

Library modules only create ``logging.getLogger(__name__)`` and log to it;
whoever runs them decides where the records go. The CLIs call
:func:`configure` once: records go to standard error through ``tqdm.write``,
so they never tear a progress bar, and ``--quiet``/``--verbose`` choose the
level of the project's loggers (other libraries stay at warnings).
"""

from __future__ import annotations

import logging
import sys

PROJECT_LOGGERS = ("hear_ced", "distill", "eval", "bench", "ced_common")


class TqdmHandler(logging.Handler):
    """Writes records to standard error between progress-bar redraws."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm  # on the first record: keeps tqdm out of a CLI's start-up

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def level_for(verbosity: int) -> int:
    """-1 (quiet): warnings and errors; 0: progress; 1 (verbose): debug."""
    if verbosity < 0:
        return logging.WARNING
    return logging.INFO if verbosity == 0 else logging.DEBUG


def configure(verbosity: int = 0) -> None:
    """Route records to standard error; the project's loggers at the level ``verbosity`` sets."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, TqdmHandler)]:
        root.removeHandler(old)
    handler = TqdmHandler()
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s")
    )
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level_for(verbosity))


def progress_enabled(logger: logging.Logger) -> bool:
    """Progress bars follow the logger: hidden when its progress records would be."""
    return logger.isEnabledFor(logging.INFO)
