"""Logging set-up for the command-line tools.

Library modules only create ``logging.getLogger(__name__)`` and log to it;
whoever runs them decides where the records go. The CLIs call
:func:`configure` once: records go to standard error through ``tqdm.write``,
so they never tear a progress bar, and ``--quiet``/``--verbose`` choose the
level of the project's loggers (other libraries stay at warnings). A record
that a library's own handler already printed (huggingface_hub, for one, gives
its loggers a stream handler and lets records propagate) is not printed again.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

PROJECT_LOGGERS = ("hear_ced", "distill", "eval", "bench", "ced_common")


def shown_below_root(record: logging.LogRecord) -> bool:
    """Whether a handler between the record's logger and the root has handled ``record``."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        if any(record.levelno >= handler.level for handler in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


class TqdmHandler(logging.Handler):
    """Writes records to standard error between progress-bar redraws, each record once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not shown_below_root(record) and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
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
