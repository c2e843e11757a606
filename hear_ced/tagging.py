"""Plain audio tagging: waveforms -> class probabilities -> the model's labels.

Tagging many files batches them through the model: each clip's log-mel is
cut into passes of at most 10.11 s (``hear_ced.specs.chunk_spans``), and
passes of the same number of 160 ms time patches, from any clips, run
stacked. A stacked pass gives each clip its own result (to float rounding):
the patch embedding drops frames past the last full patch anyway, the input
BatchNorm in eval mode works per element, and features are computed per
clip, so nothing is padded and nothing of one clip reaches another.

The batching of files, ``ModelError`` and the averaging of passes are the
torch-free ones of ``hear_ced.runtime``, shared with the ONNX runtime.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from hear_ced.audio import Outcome, read_clip
from hear_ced.checkpoints import load_model_file
from hear_ced.labels import class_names
from hear_ced.model import CED
from hear_ced.runtime import ModelError, Tagger, average_passes
from hear_ced.runtime import tag_files as tag_clips
from hear_ced.specs import chunk_spans
from hear_ced.tags import DEFAULT_BATCH_SIZE, DEFAULT_TOP, Tag, select_tags
from hear_ced.weights import resolve_weights


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

    def results() -> Iterator[tuple[int, int, np.ndarray]]:
        for patches, chunks in sorted(passes.items()):
            for first in range(0, len(chunks), batch_size):
                group = chunks[first : first + batch_size]
                tokens = model.tokens(torch.stack([mel for _, mel in group]))
                probs = torch.sigmoid(model.head(tokens.mean(dim=(1, 2)))).cpu().numpy()
                for (clip, _), p in zip(group, probs, strict=True):
                    yield clip, patches, p

    return torch.from_numpy(average_passes(len(mels), results(), model.config.num_classes))


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


class ModelTagger(Tagger):
    """A torch CED as a ``hear_ced.runtime.Tagger``: clips in, numpy probabilities out."""

    def __init__(self, model: CED) -> None:
        self.model = model
        self.labels = model_labels(model)

    def probabilities(
        self, waveforms: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        return waveform_probabilities(self.model, waveforms, batch_size).numpy()


def tag_files(
    model: CED | Tagger, paths: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[Outcome[np.ndarray]]:
    """``hear_ced.runtime.tag_files`` for a torch CED (or any ``Tagger``)."""
    tagger = model if isinstance(model, Tagger) else ModelTagger(model)
    return tag_clips(tagger, paths, batch_size)


def tag_file(model: CED, path: str | os.PathLike, top: int = DEFAULT_TOP) -> list[Tag]:
    """The ``top`` tags of one audio file."""
    return select_tags(predict(model, read_clip(path)), model_labels(model), top)
