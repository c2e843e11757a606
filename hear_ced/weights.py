"""Finding the published weights: environment variable, caches, the Hugging Face Hub.

``resolve_weights("mini")`` looks, in order, at

1. ``$HEAR_CED_WEIGHTS``: a checkpoint file (used as is, whatever its size;
   loading then checks the size), or a folder holding one file per size;
2. the cache folder, ``$HEAR_CED_CACHE`` or ``~/.cache/hear_ced``;
3. the Hugging Face repository ``mispeech/ced-SIZE`` through ``huggingface_hub``
   (``model.safetensors``, else ``pytorch_model.bin``), in the standard Hugging
   Face cache (``$HF_HOME``, ``$HF_HUB_CACHE``), offline from that cache alone.

``$HEAR_CED_OFFLINE`` or ``$HF_HUB_OFFLINE`` turn every download off; the
caches are still read. A Hub that does not answer within :func:`hub_timeout`
seconds is asked once, not retried: the lookup reads the Hugging Face cache alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hear_ced.specs import ENV_CACHE as ENV_CACHE  # weights' cache, beside their other variables
from hear_ced.specs import cache_dir

log = logging.getLogger(__name__)

ENV_WEIGHTS = "HEAR_CED_WEIGHTS"
ENV_OFFLINE = "HEAR_CED_OFFLINE"
HUB_REPO = "mispeech/ced-{variant}"
# Preferred first: safetensors needs no unpickling.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")

# The original release's file names (Zenodo record 8275319), as the cache folder holds them.
PUBLISHED_FILES = {
    "tiny": "audiotransformer_tiny_mAP_4814.pt",
    "mini": "audiotransformer_mini_mAP_4896.pt",
    "small": "audiotransformer_small_mAP_4958.pt",
    "base": "audiotransformer_base_mAP_4999.pt",
}
# Seconds the Hub has to answer: plenty for a live Hub, short enough that an
# unreachable one is reported at once (huggingface_hub alone waits minutes).
HUB_TIMEOUT = 3.0
# How a caller's user passes a checkpoint file instead; the CLIs name their option.
LIBRARY_OPTION = "load_model(model_file_path=...)"


class WeightsNotFoundError(FileNotFoundError):
    """No weights for a model size could be found or fetched."""


def hub_repo(variant: str) -> str:
    return HUB_REPO.format(variant=variant)


def folder_candidates(variant: str) -> list[str]:
    """File or sub-folder names that hold weights of ``variant`` in a folder."""
    return [
        f"{variant}.safetensors",
        f"ced-{variant}.safetensors",
        PUBLISHED_FILES[variant],
        f"ced-{variant}",  # a Hugging Face snapshot folder
    ]


def find_in_folder(folder: Path, variant: str) -> Path | None:
    """The first of :func:`folder_candidates` in ``folder`` (None for a missing folder)."""
    for name in folder_candidates(variant):
        if (folder / name).exists():
            return folder / name
    return None


def _how_to_provide(variant: str, reason: str, option: str) -> str:
    return (
        f"no weights for CED-{variant}: {reason}. Provide them in one of these ways:\n"
        f"  - pass a checkpoint file with {option};\n"
        f"  - set {ENV_WEIGHTS} to a checkpoint file, or to a folder holding one of "
        f"{', '.join(folder_candidates(variant))};\n"
        f"  - put {PUBLISHED_FILES[variant]} (the original release, Zenodo record 8275319) "
        f"into {cache_dir()};\n"
        f"  - fetch the Hugging Face repository {hub_repo(variant)} into the Hugging Face cache "
        f"(hf download {hub_repo(variant)}) while online."
    )


def downloads_allowed() -> bool:
    """False when $HEAR_CED_OFFLINE or $HF_HUB_OFFLINE asks for no network."""
    from huggingface_hub import is_offline_mode

    return not (os.environ.get(ENV_OFFLINE) or is_offline_mode())


def hub_timeout() -> float:
    """``$HF_HUB_ETAG_TIMEOUT`` when set, else :data:`HUB_TIMEOUT`."""
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_TIMEOUT)


def hub_unreachable(repo: str, filename: str) -> str | None:
    """Why the Hub gave no answer to one request for a file, or None when it answered.

    One request without retries: with nothing cached, ``hf_hub_download``
    retries an unreachable Hub with growing pauses and a 60 s timeout.
    """
    import httpx2
    from huggingface_hub import constants, get_session

    try:
        url = f"{constants.ENDPOINT}/{repo}/resolve/main/{filename}"
        get_session().head(url, timeout=hub_timeout())
    except httpx2.TransportError as exc:
        return f"the Hugging Face Hub at {constants.ENDPOINT} did not answer ({exc or type(exc).__name__})"
    return None


def from_hub(variant: str, local_only: bool) -> Path:
    """The weights file of ``mispeech/ced-VARIANT`` in the Hugging Face cache.

    Downloads it there unless ``local_only`` or the Hub does not answer;
    raises WeightsNotFoundError naming every failure. The cache alone is read
    without ``hf_hub_download``, which asks the Hub about its user agent even
    then (another wait on an unreachable Hub).
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    failures = []
    if not local_only:
        unreachable = hub_unreachable(hub_repo(variant), HUB_FILES[0])
        if unreachable:
            log.debug("%s; only the Hugging Face cache is read", unreachable)
            failures.append(unreachable)
            local_only = True
    for name in HUB_FILES:
        if local_only:
            cached = try_to_load_from_cache(hub_repo(variant), name)
            if isinstance(cached, str):
                return Path(cached)
            failures.append(f"{name}: not in the Hugging Face cache")
            continue
        try:
            return Path(hf_hub_download(hub_repo(variant), name, etag_timeout=hub_timeout()))
        except (EntryNotFoundError, OSError, ValueError) as exc:
            failures.append(f"{name}: {type(exc).__name__}")
    raise WeightsNotFoundError(f"{hub_repo(variant)} gave no weights ({'; '.join(failures)})")


def resolve_weights(variant: str, option: str = LIBRARY_OPTION) -> Path:
    """The weights file for a published size; see the module docstring.

    ``option`` is how the caller's user passes a file instead (a CLI's
    option, e.g. ``--init``); the error without weights names it.
    """
    if variant not in PUBLISHED_FILES:
        raise ValueError(
            f"no published weights for {variant!r}; choose one of {', '.join(PUBLISHED_FILES)}"
        )
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        path = Path(env)
        found = path if path.is_file() else find_in_folder(path, variant)
        if found:
            return found
        problem = "holds none of its names" if path.is_dir() else "does not exist"
        raise WeightsNotFoundError(
            _how_to_provide(variant, f"{ENV_WEIGHTS}={env} {problem}", option)
        )
    found = find_in_folder(cache_dir(), variant)
    if found:
        return found
    online = downloads_allowed()
    try:
        return from_hub(variant, local_only=not online)
    except WeightsNotFoundError as exc:
        reason = str(exc) if online else "nothing cached and downloads are off"
        raise WeightsNotFoundError(_how_to_provide(variant, reason, option)) from None
