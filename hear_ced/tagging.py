"""Plain audio tagging: waveforms -> class probabilities -> the model's labels.

Tagging many files batches them through the model: each clip's log-mel is
cut into passes of at most 10.11 s (``hear_ced.model.chunk_spans``), and
passes of the same number of 160 ms time patches, from any clips, run
stacked. A stacked pass gives each clip its own result (to float rounding):
the patch embedding drops frames past the last full patch anyway, the input
BatchNorm in eval mode works per element, and features are computed per
clip, so nothing is padded and nothing of one clip reaches another.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch

from hear_ced.audio import Outcome, read_clip, read_outcomes
from hear_ced.checkpoints import load_model_file
from hear_ced.labels import class_names
from hear_ced.model import CED, chunk_spans
from hear_ced.tags import DEFAULT_BATCH_SIZE, DEFAULT_TOP, Tag, select_tags
from hear_ced.weights import resolve_weights

T = TypeVar("T")


class ModelError(ValueError):
    """The model failed (shapes, dtypes, the device at run time), not the audio it was given."""


def load_tagger(variant: str = "mini", model_file: str | os.PathLike | None = None) -> CED:
    """A CED for tagging: ``model_file`` if given, else the published ``variant``."""
    if model_file:
        return load_model_file(model_file)
    return load_model_file(resolve_weights(variant, option="--model"), variant=variant)


def inference_device(spec: str) -> torch.device:
    """The torch device named ``spec`` (cpu, cuda, cuda:1, mps), refused unless it is here."""
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r} (cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"no CUDA device here for {spec!r}; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"no device {spec!r}: this machine has cuda:0 .. cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"no MPS device here for {spec!r}; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {spec!r} (cpu, cuda, cuda:N or mps)")
    return device


def model_labels(model: CED) -> list[str]:
    """The names of the model's outputs (``hear_ced.labels.class_names``)."""
    try:
        return class_names(model.labels, model.config.num_classes)
    except ValueError as exc:
        raise ModelError(str(exc)) from exc


def _device(model: CED) -> torch.device:
    return next(model.parameters()).device


def pad_to_patch(model: CED, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A checked 1-D float32 clip, zero-padded at the end to one patch (160 ms)."""
    wave = torch.as_tensor(waveform, dtype=torch.float32)
    if wave.ndim != 1 or wave.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {tuple(wave.shape)}")
    padded = model.config.patch_samples
    if wave.numel() < padded:
        wave = torch.nn.functional.pad(wave, (0, padded - wave.numel()))
    return wave


@torch.no_grad()
def mel_probabilities(
    model: CED, mels: Sequence[torch.Tensor], batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """Class probabilities (N, classes) of log-mel clips (64, frames), each of any length.

    Passes of equal patch counts run ``batch_size`` at a time (see the module
    docstring). A clip longer than one pass averages its passes'
    probabilities (not their logits), weighted by their number of time
    patches, as the published model averages its chunks' outputs.
    """
    if batch_size < 1:
        raise ValueError(f"the batch size must be positive, got {batch_size}")
    patch = model.config.patch_size
    passes: dict[int, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for clip, mel in enumerate(mels):
        for start, end in chunk_spans(mel.shape[-1], model.config.target_length, patch):
            patches = (end - start) // patch
            passes[patches].append((clip, mel[:, start : start + patches * patch]))
    sums = torch.zeros(len(mels), model.config.num_classes, dtype=torch.float64)
    weights = torch.zeros(len(mels), 1, dtype=torch.float64)
    for patches, chunks in sorted(passes.items()):
        for first in range(0, len(chunks), batch_size):
            group = chunks[first : first + batch_size]
            tokens = model.tokens(torch.stack([mel for _, mel in group]))
            probs = torch.sigmoid(model.head(tokens.mean(dim=(1, 2)))).double().cpu()
            for (clip, _), p in zip(group, probs, strict=True):
                sums[clip] += patches * p
                weights[clip] += patches
    return (sums / weights).float()


@torch.no_grad()
def waveform_probabilities(
    model: CED,
    waveforms: Sequence[np.ndarray | torch.Tensor],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Class probabilities (N, classes), on the CPU, of 16 kHz mono clips of any lengths."""
    device = _device(model)
    mels = [model.mel(pad_to_patch(model, w).to(device)[None])[0] for w in waveforms]
    return mel_probabilities(model, mels, batch_size)


def predict(model: CED, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Class probabilities (classes,) of one 16 kHz mono clip of any length."""
    return waveform_probabilities(model, [waveform])[0]


def run_model(call: Callable[..., T], *args, **kwargs) -> T:
    """``call(*args, **kwargs)``, its failures (shapes, dtypes, the device) reported as the model's."""
    try:
        return call(*args, **kwargs)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"the model failed: {exc}") from exc


def tag_files(
    model: CED, paths: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[Outcome[np.ndarray]]:
    """Each file's class probabilities, in the order given, ``batch_size`` files at a time.

    A file that cannot be read gets its error and the others go on; a
    failure of the model raises ``ModelError``.
    """
    pending: list[Outcome[np.ndarray]] = []

    def flush() -> Iterator[Outcome[np.ndarray]]:
        waves = [o.result for o in pending if o.error is None]
        probs = run_model(waveform_probabilities, model, waves, batch_size)
        rows = iter(probs.numpy())
        for o in pending:
            yield o if o.error is not None else Outcome(o.path, next(rows))

    for outcome in read_outcomes(paths):
        pending.append(outcome)
        if len(pending) == batch_size:
            yield from flush()
            pending = []
    if pending:
        yield from flush()


def tag_file(model: CED, path: str | os.PathLike, top: int = DEFAULT_TOP) -> list[Tag]:
    """The ``top`` tags of one audio file."""
    return select_tags(predict(model, read_clip(path)), model_labels(model), top)
