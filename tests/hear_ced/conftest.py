import logging

import pytest

from ced_common.logs import PROJECT_LOGGERS, TqdmHandler


@pytest.fixture(autouse=True)
def restore_logging():
    """A CLI run configures logging for its process; later tests get the set-up they started with."""
    root = logging.getLogger()
    before, root_level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in PROJECT_LOGGERS}
    yield
    for handler in list(root.handlers):
        if isinstance(handler, TqdmHandler) and handler not in before:
            root.removeHandler(handler)
    root.setLevel(root_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
