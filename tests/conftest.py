import logging
import os

import pytest

from ced_common.logs import PROJECT_LOGGERS, TqdmHandler

# Tests never touch the network, whatever the machine allows.
os.environ.setdefault("HEAR_CED_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _cli_logging_undone():
    """An in-process CLI run configures logging for the whole process; undo it after each test."""
    root = logging.getLogger()
    before = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in (None, *PROJECT_LOGGERS)}
    yield
    for handler in root.handlers[:]:
        if isinstance(handler, TqdmHandler) and handler not in before:
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
