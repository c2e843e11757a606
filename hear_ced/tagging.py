"""Plain audio tagging: waveforms -> class probabilities -> the model's labels.

A torch CED runs as a ``hear_ced.runtime.Tagger`` (``ModelTagger``): the
runtime cuts each clip into passes of at most 10.11 s with their context
(``hear_ced.runtime.pass_inputs``), in memory or block by block, and stacks
passes of one length, from any clips. A stacked pass gives each clip its own
result (to float rounding): features are computed per pass, the input
BatchNorm in eval mode works per element, and nothing is padded, so nothing
of one clip reaches another. The batching of files, ``ModelError`` and the
averaging of passes are the torch-free ones of ``hear_ced.runtime``, shared
with the ONNX runtime.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

import numpy as np
import torch

from hear_ced.checkpoints import load_model_file
from hear_ced.labels import class_names, known_class_names
from hear_ced.model import CED
from hear_ced.runtime import Tagger, tag_files
from hear_ced.specs import CONTEXT_FRAMES
from hear_ced.tags import DEFAULT_TOP, Tag, select_tags
from hear_ced.weights import resolve_weights


def load_tagger(variant: str = "mini", model_file: str | os.PathLike | None = None) -> CED:
    """A CED for tagging: ``model_file`` if given, else the published ``variant``."""
    if model_file:
        return load_model_file(model_file)
    return load_model_file(resolve_weights(variant, option="--model"), variant=variant)


def pass_probabilities(model: CED, mel: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, classes) of log-mels (B, 64, frames) of one pass each.

    The sigmoid of one pass's logits; a clip of any length averages these
    over its passes (``hear_ced.runtime.Tagger.probabilities``).
    """
    return torch.sigmoid(model.forward_mel(mel).float())


def predict(model: CED, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Class probabilities (classes,) of one 16 kHz mono clip of any length, on the CPU."""
    wave = waveform.cpu().numpy() if isinstance(waveform, torch.Tensor) else waveform
    return torch.from_numpy(ModelTagger(model).probabilities([wave])[0])


# glibc's mallopt parameter: the size from which allocations are mmapped.
_M_MMAP_THRESHOLD = -3


@cache
def fix_mmap_threshold(size: int = 128 * 1024) -> None:
    """Have glibc serve allocations of ``size`` and more from mmap, returned when freed.

    By default glibc raises that threshold to the size of each such block
    freed, so a pass's temporaries (a few MB each) then come from the heap,
    which they fragment: the peak memory of tagging a 10 h file crept up
    with its length. Once per process, and process-wide: ``hear-ced``'s
    commands set it, a program using the library decides for itself.
    Nothing where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, size)


class ModelTagger(Tagger):
    """A torch CED as a ``hear_ced.runtime.Tagger``: pass inputs in, numpy probabilities out."""

    def __init__(self, model: CED) -> None:
        self.model = model
        self.num_classes = model.config.num_classes
        self.target_length = model.config.target_length
        self.patch_size = model.config.patch_size
        self.labels = known_class_names(model.config.labels, self.num_classes)

    @torch.no_grad()
    def run_passes(self, inputs: np.ndarray) -> np.ndarray:
        """The model's frontend on each input, without its context frames, then one pass.

        The frontend runs an input at a time: its spectra are the largest
        temporaries, and a batch of them (tens of MB) leaves the C heap
        fragmented, so that a long file's peak memory crept up with its length.
        """
        device = next(self.model.parameters()).device
        frontend = self.model.front_end
        mels = [frontend(torch.from_numpy(w)[None].to(device), CONTEXT_FRAMES) for w in inputs]
        return pass_probabilities(self.model, torch.cat(mels)).cpu().numpy()


def tag_file(model: CED, path: str | os.PathLike, top: int = DEFAULT_TOP) -> list[Tag]:
    """The ``top`` tags of one audio file (read block by block if longer than a pass)."""
    [outcome] = tag_files(ModelTagger(model), [str(path)])
    if outcome.error is not None:
        raise ValueError(outcome.error)
    return select_tags(
        outcome.result, class_names(model.config.labels, model.config.num_classes), top
    )
