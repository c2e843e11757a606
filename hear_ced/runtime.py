"""Tagging without torch: the rules every runtime shares, and exported graphs on onnxruntime.

Both runtimes, torch (``hear_ced.tagging``) and an exported ONNX graph
(``OnnxTagger``), cut a clip into the same passes of at most 10.11 s
(``chunk_spans``) and average the passes' probabilities weighted by their
time patches (``average_passes``). The torch side computes the log-mel of the
whole clip and cuts frames; the graph computes it per pass from the pass's
samples (``pass_samples``), so the frames at the edges of a pass of a long
clip see the pass's reflected samples instead of its neighbours. Up to
10.11 s a float32 graph gives torch's probabilities to float rounding (1e-6);
a longer clip's differ by up to a few 1e-4 (measured on random-weight models
and noise), while each pass equals torch on the pass's own samples.

Nothing here imports torch: ``hear-ced tag --onnx`` runs on onnxruntime,
numpy, soundfile and soxr alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from hear_ced.audio import Outcome, header_samples, read_blocks, read_outcomes
from hear_ced.labels import class_names
from hear_ced.specs import HOP_LENGTH, SAMPLE_RATE, chunk_spans
from hear_ced.tags import DEFAULT_BATCH_SIZE

log = logging.getLogger(__name__)

T = TypeVar("T")

# Metadata every hear-ced export carries (``hear_ced.export.export_onnx``).
REQUIRED_METADATA = ("sample_rate", "min_samples", "max_samples", "output", "ced_config")


class ModelError(ValueError):
    """The model failed (shapes, dtypes, the device at run time), not the audio it was given."""


def run_model(call: Callable[..., T], *args, **kwargs) -> T:
    """``call(*args, **kwargs)``, its failures (shapes, dtypes, the device) reported as the model's."""
    try:
        return call(*args, **kwargs)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"the model failed: {exc}") from exc


def streamed_outcome(path: str, call: Callable[..., T], *args) -> Outcome[T]:
    """``run_model(call, *args)`` on a file read in blocks: the file's own errors
    (unreadable, empty, non-finite, found mid-stream) become its Outcome; a
    failure of the model propagates."""
    try:
        return Outcome(path, run_model(call, *args))
    except ModelError:
        raise
    except ValueError as exc:
        return Outcome(path, error=str(exc))


def pass_samples(
    n_samples: int, target_length: int, patch_size: int, hop: int = HOP_LENGTH
) -> list[tuple[int, int, int]]:
    """(first sample, end sample, time patches) of each pass over a clip of ``n_samples``.

    The passes of ``chunk_spans`` over the clip's ``1 + n // hop`` frames, as
    the samples that give exactly those frames on their own: a full pass
    ends one sample short of the next one's start.
    """
    frames = 1 + n_samples // hop
    return [
        (start * hop, min(end * hop - 1, n_samples), (end - start) // patch_size)
        for start, end in chunk_spans(frames, target_length, patch_size)
    ]


def average_passes(
    n_clips: int, results: Iterable[tuple[int, int, np.ndarray]], num_classes: int
) -> np.ndarray:
    """(n_clips, classes) float32: each clip's pass probabilities averaged, weighted by patches.

    ``results`` holds (clip, time patches, probabilities) per pass. The
    probabilities (not the logits) are averaged, as the published model
    averages its chunks' outputs.
    """
    sums = np.zeros((n_clips, num_classes), dtype=np.float64)
    weights = np.zeros((n_clips, 1), dtype=np.float64)
    for clip, patches, probs in results:
        sums[clip] += patches * np.asarray(probs, dtype=np.float64)
        weights[clip] += patches
    return (sums / weights).astype(np.float32)


class Tagger:
    """Something that turns 16 kHz mono clips into class probabilities under ``labels``."""

    labels: list[str]
    # Files longer than this many 16 kHz samples are read block by block
    # (``stream_probabilities``); None: every file is read whole.
    stream_after: int | None = None

    def probabilities(
        self, waveforms: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """Class probabilities (N, classes) of clips of any lengths, ``batch_size`` passes a call."""
        raise NotImplementedError

    def stream_probabilities(self, blocks: Iterable[np.ndarray], batch_size: int) -> np.ndarray:
        """Class probabilities (classes,) of one clip given as consecutive 16 kHz blocks."""
        raise NotImplementedError


def tag_files(
    tagger: Tagger, paths: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[Outcome[np.ndarray]]:
    """Each file's class probabilities, in the order given, ``batch_size`` files at a time.

    A file that cannot be read gets its error and the others go on; a
    failure of the model raises ``ModelError``. A file longer than
    ``tagger.stream_after`` is read and tagged block by block, on its own.
    """
    pending: list[Outcome[np.ndarray]] = []

    def flush() -> Iterator[Outcome[np.ndarray]]:
        waves = [o.result for o in pending if o.error is None]
        rows = iter(run_model(tagger.probabilities, waves, batch_size) if waves else [])
        for o in pending:
            yield o if o.error is not None else Outcome(o.path, next(rows))

    def streamed(path: str) -> bool:
        if tagger.stream_after is None:
            return False
        samples = header_samples(path)
        return samples is not None and samples > tagger.stream_after

    for path in paths:
        if streamed(path):
            if pending:
                yield from flush()
                pending = []
            yield streamed_outcome(path, tagger.stream_probabilities, read_blocks(path), batch_size)
            continue
        pending.extend(read_outcomes([path]))
        if len(pending) == batch_size:
            yield from flush()
            pending = []
    if pending:
        yield from flush()


def _metadata(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def run_onnx(session, waveform: np.ndarray) -> np.ndarray:
    """Run an exported graph on (batch, samples) float32 audio, checking the length limits.

    ``session`` is an ``onnxruntime.InferenceSession`` of an exported file.
    """
    meta = _metadata(session)
    if waveform.ndim != 2:
        raise ValueError(f"waveform must be (batch, samples), got shape {waveform.shape}")
    n = waveform.shape[1]
    low, high = int(meta["min_samples"]), int(meta["max_samples"])
    if not low <= n <= high:
        raise ValueError(
            f"the ONNX graph takes {low} to {high} samples ({high / SAMPLE_RATE:.2f} s) per clip, "
            f"got {n}; cut longer clips into chunks and combine the outputs"
        )
    return session.run(None, {"waveform": waveform.astype(np.float32, copy=False)})[0]


def onnx_labels(session) -> list[str]:
    """The class names of an exported probabilities graph, in the order of its outputs.

    The names the exporter stored in the metadata (the model's own, or
    AudioSet's for a 527-class model); for a graph without them
    ``hear_ced.labels.class_names`` numbers the outputs.
    """
    meta = _metadata(session)
    if meta.get("output") != "probabilities":
        raise ValueError(
            f"the ONNX graph outputs {meta.get('output', 'no probabilities')}, not classes"
        )
    num_classes = session.get_outputs()[0].shape[-1]
    stored = json.loads(meta["labels"]) if "labels" in meta else None
    return class_names(stored, int(num_classes))


class OnnxTagger(Tagger):
    """An exported probabilities graph (``hear-ced export-onnx``) run with onnxruntime.

    Clips are padded to one patch and cut into passes exactly as the torch
    path does (``pass_samples``); passes of one length run stacked.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"cannot load ONNX graph {path}: {exc}") from exc
        meta = _metadata(self.session)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        problems = []
        if [(i.name, len(i.shape)) for i in inputs] != [("waveform", 2)]:
            problems.append("its input is not waveform (batch, samples)")
        if [(o.name, len(o.shape)) for o in outputs] != [("probabilities", 2)] or not isinstance(
            outputs[0].shape[-1], int
        ):
            problems.append("its output is not probabilities (batch, classes)")
        missing = [key for key in REQUIRED_METADATA if key not in meta]
        if missing:
            problems.append(f"its metadata lacks {', '.join(missing)}")
        if problems:
            raise ValueError(f"not a hear-ced export: {path}: {'; '.join(problems)}")
        if int(meta["sample_rate"]) != SAMPLE_RATE:
            raise ValueError(f"not a hear-ced export: {path} takes {meta['sample_rate']} Hz audio")
        config = json.loads(meta["ced_config"])
        self.target_length = int(config["target_length"])
        self.patch_size = int(config["patch_size"])
        self.max_samples = int(meta["max_samples"])
        if self.max_samples + 1 != self.target_length * HOP_LENGTH:
            raise ValueError(
                f"not a hear-ced export: {path}: max_samples {self.max_samples} does not match "
                f"its {self.target_length}-frame passes"
            )
        self.num_classes = int(outputs[0].shape[-1])
        self.labels = onnx_labels(self.session)
        self.stream_after = self.max_samples
        self._pass_shape = (self.target_length, self.patch_size)

    def _passes(self, waves: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N, classes) of passes of one length, run stacked."""
        return run_onnx(self.session, np.stack(waves))

    def probabilities(
        self, waveforms: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"the batch size must be positive, got {batch_size}")
        padded = self.patch_size * HOP_LENGTH
        passes: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        for clip, wave in enumerate(waveforms):
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim != 1 or wave.size == 0:
                raise ValueError(f"expected a non-empty 1-D waveform, got shape {wave.shape}")
            if wave.size < padded:
                wave = np.pad(wave, (0, padded - wave.size))
            for start, end, patches in pass_samples(wave.size, *self._pass_shape):
                passes[end - start].append((clip, patches, wave[start:end]))

        def results() -> Iterator[tuple[int, int, np.ndarray]]:
            for _, chunks in sorted(passes.items()):
                for first in range(0, len(chunks), batch_size):
                    group = chunks[first : first + batch_size]
                    probs = self._passes([wave for _, _, wave in group])
                    for (clip, patches, _), p in zip(group, probs, strict=True):
                        yield clip, patches, p

        return average_passes(len(waveforms), results(), self.num_classes)

    def stream_probabilities(
        self, blocks: Iterable[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """``probabilities`` of one clip given as blocks, holding ``batch_size`` passes at most.

        A pass whose samples have all arrived is full whatever follows
        (``pass_samples``); full passes run ``batch_size`` at a time, and the
        rest of the clip is cut by ``pass_samples`` once its length is known.
        """
        period = self.target_length * HOP_LENGTH  # samples from one pass's start to the next
        full_patches = self.target_length // self.patch_size
        buffer, offset = np.zeros(0, np.float32), 0
        group: list[np.ndarray] = []
        results: list[tuple[int, int, np.ndarray]] = []

        def run_group() -> None:
            results.extend((0, full_patches, p) for p in self._passes(group))
            group.clear()

        for block in blocks:
            buffer = np.concatenate([buffer, np.asarray(block, dtype=np.float32).reshape(-1)])
            while buffer.size >= period:
                group.append(buffer[: period - 1])
                buffer, offset = buffer[period:], offset + period
                if len(group) == batch_size:
                    run_group()
        if group:
            run_group()
        if offset == 0:
            return self.probabilities([buffer], batch_size)[0]
        for start, end, patches in pass_samples(offset + buffer.size, *self._pass_shape):
            if start >= offset:
                wave = buffer[start - offset : end - offset]
                results.append((0, patches, self._passes([wave])[0]))
        return average_passes(1, results, self.num_classes)[0]
