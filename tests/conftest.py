import logging
import os
from collections import Counter

import pytest

from hear_ced.common.logs import PROJECT_LOGGERS, TqdmHandler

# Tests never touch the network, whatever the machine allows.
os.environ.setdefault("HEAR_CED_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist the workers share the CPUs: each worker, and every process a test
# starts, computes with its share of them instead of all of them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))


@pytest.hookimpl(trylast=True)  # after tests/eval/conftest.py has marked its slow tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with the most slow tests first, so that under ``make test`` the longest
    modules start at once and the short ones fill the workers' ends."""
    slow = Counter(item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])


@pytest.fixture(autouse=True, scope="session")
def fast_auto_cache(tmp_path_factory):
    """fast=auto keeps its decisions in the session's temporary folder, not the user's cache."""
    path = tmp_path_factory.mktemp("fast-auto") / "fast-auto.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEAR_CED_FAST_CACHE", str(path))
        yield path


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """No published weights anywhere: no weights folder, empty caches, downloads off.

    Returns the test's temporary folder, which holds the two caches.
    """
    import huggingface_hub.constants

    import hear_ced.weights as weights

    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


@pytest.fixture(autouse=True)
def restore_logging():
    """A CLI run configures logging for its process; later tests get the set-up they started with."""
    root = logging.getLogger()
    before, root_level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in PROJECT_LOGGERS}
    hub = logging.getLogger("huggingface_hub")
    hub_propagates = hub.propagate
    yield
    hub.propagate = hub_propagates
    for handler in list(root.handlers):
        if isinstance(handler, TqdmHandler) and handler not in before:
            root.removeHandler(handler)
    root.setLevel(root_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> str:
    """A seeded random-weight CED (32 wide, one block) saved natively: the CLIs' quick model."""
    import torch

    from hear_ced.checkpoints import save_model
    from hear_ced.model import CED, CEDConfig

    torch.manual_seed(0)
    model = CED(CEDConfig(embed_dim=32, depth=1, num_heads=1)).eval()
    return str(save_model(model, tmp_path_factory.mktemp("w") / "small.safetensors"))
