"""Default weights: environment variable, cache, download, and the error without them."""

import socket
import threading
import time

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch

import hear_ced.mini
import hear_ced.weights as weights
from hear_ced.checkpoints import save_model
from hear_ced.model import PUBLISHED_SIZES, build_model

from .layouts import save_original


@pytest.fixture(scope="module")
def mini_model():
    torch.manual_seed(0)
    return build_model("mini")


class SilentServer:
    """Accepts connections on loopback, keeps them open and never answers."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.listener.accept()[0])
            except OSError:  # closed
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def close(self):
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent_hub(monkeypatch):
    """Downloads allowed; the Hub's address accepts connections and never answers."""
    server = SilentServer()
    monkeypatch.delenv(weights.ENV_OFFLINE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
    # huggingface_hub fetches a registry from the Hub once per process for its user agent
    import huggingface_hub.utils._detect_agent as detect_agent

    monkeypatch.setattr(detect_agent, "_registry", None)
    yield server
    server.close()


def test_silent_hub_fails_fast_once_naming_the_callers_option(no_weights, silent_hub, caplog):
    outcome = {}

    def lookup():
        try:
            weights.resolve_weights("mini", option="--init")
        except weights.WeightsNotFoundError as exc:
            outcome["error"] = str(exc)

    start = time.monotonic()
    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout=3 * weights.HUB_TIMEOUT)
    assert not worker.is_alive(), "the lookup still waits on a Hub that does not answer"
    assert time.monotonic() - start < 2 * weights.HUB_TIMEOUT + 1
    message = outcome["error"]
    assert message.count("did not answer") == 1 and "gave no weights" in message
    assert "with --init" in message and "-m/--model" not in message
    assert not [r for r in caplog.records if "Retry" in r.getMessage()]
    assert len(silent_hub.accepted) == 1  # asked once: no retry, no other request


def test_library_callers_are_told_of_load_model(no_weights):
    with pytest.raises(weights.WeightsNotFoundError, match=r"load_model\(model_file_path=\.\.\.\)"):
        weights.resolve_weights("mini")


def test_env_file(no_weights, monkeypatch, mini_model):
    path = save_model(mini_model, no_weights / "any-name.safetensors")
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(path))
    assert weights.resolve_weights("mini") == path
    assert hear_ced.mini.load_model().scene_embedding_size == 256


def test_env_folder_holds_one_file_per_size(no_weights, monkeypatch, mini_model):
    folder = no_weights / "weights"
    folder.mkdir()
    save_model(mini_model, folder / "mini.safetensors")
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(folder))
    assert weights.resolve_weights("mini") == folder / "mini.safetensors"
    with pytest.raises(weights.WeightsNotFoundError, match="holds none of its names"):
        weights.resolve_weights("tiny")


def test_env_missing_path(no_weights, monkeypatch):
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(no_weights / "nope"))
    with pytest.raises(weights.WeightsNotFoundError, match="does not exist"):
        weights.resolve_weights("mini")


def test_cache_holds_published_file(no_weights, mini_model):
    cache = no_weights / "cache"
    cache.mkdir()
    path = save_original(mini_model, cache / weights.PUBLISHED_FILES["mini"])
    assert weights.resolve_weights("mini") == path


def test_offline_without_weights_explains_how_to_provide(no_weights):
    with pytest.raises(weights.WeightsNotFoundError) as info:
        hear_ced.mini.load_model()
    message = str(info.value)
    assert weights.ENV_WEIGHTS in message and "audiotransformer_mini_mAP_4896.pt" in message
    assert "Zenodo record 8275319" in message


def test_the_published_names_are_one_per_size():
    assert tuple(weights.PUBLISHED_FILES) == PUBLISHED_SIZES


def test_hub_timeout_follows_hf_hub_etag_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    assert weights.hub_timeout() == weights.HUB_TIMEOUT <= 5
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1.5")
    assert weights.hub_timeout() == 1.5
