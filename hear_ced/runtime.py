"""Tagging without torch: the rules every runtime shares, and exported graphs on onnxruntime.

Both runtimes, torch (``hear_ced.tagging.ModelTagger``) and an exported ONNX
graph (``OnnxTagger``), are a ``Tagger``: they only run stacks of passes
(``Tagger.run_passes``). Cutting a clip into passes is shared here:
``pass_inputs`` cuts a clip given as blocks (in memory: one block),
whatever the blocks, into the same inputs (each pass's samples with the
clip's neighbouring samples as context). So a file tagged whole or block by
block, on torch or on a float32 graph, gets the same passes and features,
and the passes' probabilities are averaged with the same weights (``average_passes``).
``Tagger.probabilities`` is the one prediction of a clip, of any length, for
every command (tag, ``ced-distill evaluate``, validation in training and
fine-tuning); ``length_batches`` the one batching of clips or passes by length.

Nothing here imports torch: ``hear-ced tag --onnx`` runs on onnxruntime,
numpy, soundfile and soxr alone.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import platform
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import numpy as np

from hear_ced.audio import Outcome, header_samples, read_blocks, read_outcomes
from hear_ced.common.logs import progress_bar
from hear_ced.labels import known_class_names
from hear_ced.specs import (
    CONTEXT_FRAMES,
    CONTEXT_SAMPLES,
    HOP_LENGTH,
    SAMPLE_RATE,
    cache_dir,
    chunk_spans,
    max_pass_samples,
)
from hear_ced.tags import DEFAULT_BATCH_SIZE

T = TypeVar("T")
log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

# Metadata every hear-ced export carries (``hear_ced.export.export_onnx``).
REQUIRED_METADATA = ("sample_rate", "min_samples", "max_samples", "output", "ced_config")
# Files longer than this many seconds are read with a progress bar (``file_blocks``).
PROGRESS_SECONDS = 60
# The graph's second input: frames at each end of the waveform that are context only.
CONTEXT_INPUT = "context_frames"


class ModelError(ValueError):
    """The model failed (shapes, dtypes, the device at run time), not the audio it was given."""


def streamed_outcome(path: str, call: Callable[..., T], *args) -> Outcome[T]:
    """``call(*args)`` on a file read in blocks: the file's own errors (unreadable, empty,
    non-finite, found mid-stream) become its Outcome; a ``ModelError`` propagates."""
    try:
        return Outcome(path, call(*args))
    except ModelError:
        raise
    except ValueError as exc:
        return Outcome(path, error=str(exc))


def file_blocks(path: str) -> Iterator[np.ndarray]:
    """``read_blocks(path)``; for a file longer than ``PROGRESS_SECONDS`` (by its header),
    with a progress bar in seconds of audio read, so that a long file shows its pace."""
    samples = header_samples(path)
    if samples is None or samples <= PROGRESS_SECONDS * SAMPLE_RATE:
        yield from read_blocks(path)
        return
    total = round(samples / SAMPLE_RATE, 1)
    name = os.path.basename(path)
    with progress_bar(total=total, unit="s", desc=name, leave=False, logger=log) as bar:
        for block in read_blocks(path):
            yield block
            bar.update(min(block.size / SAMPLE_RATE, total - bar.n))


def pass_inputs(
    blocks: Iterable[np.ndarray], target_length: int, patch_size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(time patches, input samples) of each pass over a 16 kHz clip given as consecutive
    1-D blocks (a clip in memory is one block): the one definition of a tagging pass.

    The clip is zero-padded at the end to one patch (160 ms), then by
    ``CONTEXT_SAMPLES`` reflected samples at each end (``numpy.pad`` mode
    "reflect"). The passes cut the frames of the whole clip's log-mel,
    ``1 + n // hop``, by ``chunk_spans``; each pass's input is its frames'
    samples and ``CONTEXT_FRAMES`` frames more on each side, so that a
    centred STFT of the input, without its first and last ``CONTEXT_FRAMES``
    frames, is the pass's frames of the whole clip. A full pass is handed
    out as soon as the last sample of its input has arrived (none of its
    input is then reflected, whatever follows), so memory holds about a pass
    of samples; the rest of the clip is cut once its length is known. Raises
    ValueError for a clip without samples.
    """
    step = target_length * HOP_LENGTH  # input samples from one full pass's start to the next
    span = (target_length + 2 * CONTEXT_FRAMES - 1) * HOP_LENGTH  # a full pass's input
    head = np.zeros(0, np.float32)  # the first samples, until the left reflection can be made
    buffer = None  # the padded clip from sample ``origin`` on
    origin, received, full = 0, 0, 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {block.shape}")
        received += block.size
        if buffer is None:
            head = np.concatenate([head, block])
            if head.size <= CONTEXT_SAMPLES:
                continue
            buffer = np.concatenate([head[CONTEXT_SAMPLES:0:-1], head])
        else:
            buffer = np.concatenate([buffer, block])
        while origin + span <= CONTEXT_SAMPLES + received:
            yield target_length // patch_size, buffer[:span]
            buffer, origin, full = buffer[step:], origin + step, full + 1
    if received == 0:
        raise ValueError("the clip holds no audio samples")
    n = max(received, patch_size * HOP_LENGTH)
    if buffer is None:  # too short to reflect: the padding to one patch comes first
        head = np.concatenate([head, np.zeros(n - received, np.float32)])
        buffer, received = np.concatenate([head[CONTEXT_SAMPLES:0:-1], head]), n
    buffer = np.concatenate([buffer, np.zeros(n - received, np.float32)])
    buffer = np.concatenate([buffer, buffer[-2 : -CONTEXT_SAMPLES - 2 : -1]])
    for start, end in chunk_spans(1 + n // HOP_LENGTH, target_length, patch_size)[full:]:
        last = (end + 2 * CONTEXT_FRAMES - 1) * HOP_LENGTH
        yield (end - start) // patch_size, buffer[start * HOP_LENGTH - origin : last - origin]


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


def length_batches(
    items: Iterable[T], length: Callable[[T], int], batch_size: int, held: int | None = None
) -> Iterator[list[T]]:
    """``items`` in batches of one ``length`` each, at most ``batch_size``: the one batcher.

    Items of a length keep their order. A batch goes as soon as it is full;
    when ``held`` items wait (a bound on memory), the largest batch goes; the
    rest go at the end, shortest length first.
    """
    if batch_size < 1:
        raise ValueError(f"the batch size must be positive, got {batch_size}")
    pending: dict[int, list[T]] = defaultdict(list)
    waiting = 0
    for item in items:
        key = length(item)
        pending[key].append(item)
        del item  # its batch alone holds it: what waits is all that is held
        waiting += 1
        if len(pending[key]) < batch_size and (held is None or waiting < held):
            continue
        if len(pending[key]) < batch_size:
            key = max(pending, key=lambda n: len(pending[n]))
        waiting -= len(pending[key])
        yield pending.pop(key)
    for key in sorted(pending):
        yield pending[key]


class Tagger:
    """Something that runs passes (``run_passes``) of clips into class probabilities."""

    # The names the model or graph carries (``hear_ced.labels.known_class_names``), if any.
    labels: list[str] | None
    num_classes: int
    target_length: int  # frames of a full pass
    patch_size: int  # frames of a time patch

    def run_passes(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) of N pass inputs of one length (``pass_inputs``)."""
        raise NotImplementedError

    def probabilities(
        self, waveforms: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """Class probabilities (N, classes) of 16 kHz clips of any lengths: the one rule.

        Each clip's passes (``pass_inputs``) run ``batch_size`` at a time with
        passes of the same input length from any clips (features are computed
        per pass, so stacking changes nothing), and their probabilities are
        averaged weighted by time patches (``average_passes``).
        """
        passes = (
            (clip, patches, samples)
            for clip, wave in enumerate(waveforms)
            for patches, samples in pass_inputs([wave], self.target_length, self.patch_size)
        )
        return average_passes(len(waveforms), self._run(passes, batch_size), self.num_classes)

    def stream_probabilities(
        self, blocks: Iterable[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """``probabilities`` of one clip given as blocks, holding ``batch_size`` passes at most."""
        passes = (
            (0, patches, samples)
            for patches, samples in pass_inputs(blocks, self.target_length, self.patch_size)
        )
        return average_passes(1, self._run(passes, batch_size, batch_size), self.num_classes)[0]

    def _run(
        self,
        passes: Iterable[tuple[int, int, np.ndarray]],
        batch_size: int,
        held: int | None = None,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(clip, time patches, probabilities) of (clip, time patches, input) passes.

        Failures of ``run_passes`` (shapes, dtypes, the device) are the model's: ``ModelError``.
        """
        for group in length_batches(passes, lambda p: p[2].size, batch_size, held):
            try:
                probs = self.run_passes(np.stack([samples for _, _, samples in group]))
            except (RuntimeError, TypeError) as exc:
                raise ModelError(f"the model failed: {exc}") from exc
            for (clip, patches, _), p in zip(group, probs, strict=True):
                yield clip, patches, p


def tag_files(
    tagger: Tagger, paths: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[Outcome[np.ndarray]]:
    """Each file's class probabilities, in the order given, ``batch_size`` files at a time.

    A file that cannot be read gets its error and the others go on; a
    failure of the model raises ``ModelError``. A file longer than one pass
    (``max_pass_samples``) is read and tagged block by block, on its own.
    """

    def streamed(path: str) -> bool:
        samples = header_samples(path)
        return samples is not None and samples > max_pass_samples(tagger.target_length)

    for long, group in groupby(paths, key=streamed):
        if long:
            for path in group:
                blocks = file_blocks(path)
                yield streamed_outcome(path, tagger.stream_probabilities, blocks, batch_size)
            continue
        for chunk in length_batches(group, lambda _: 0, batch_size):
            outcomes = list(read_outcomes(chunk))
            waves = [o.result for o in outcomes if o.error is None]
            rows = iter(tagger.probabilities(waves, batch_size) if waves else [])
            for o in outcomes:
                yield o if o.error is not None else Outcome(o.path, next(rows))


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


def session_options():
    """onnxruntime session options for a hear-ced graph.

    onnxruntime warns at every load that ``context_frames``, an input with a
    default, is not a constant; that is what it is for, so its warnings are off
    (errors still raise).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


# What each kind of exported graph is for: the command that runs it.
GRAPH_COMMANDS = {"probabilities": "hear-ced tag --onnx", "embeddings": "hear-ced embed --onnx"}


def cpu_fields(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of ``cpuinfo`` (model name, flags, ...); none off Linux."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if not line.strip() and fields:
                    break
                name, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_key() -> str:
    """The CPU as onnxruntime picks its kernels by it: model name and feature flags (Linux)."""
    fields = cpu_fields()
    if not fields:
        return platform.machine()
    return f"{fields.get('model name', '')} | {fields.get('flags', '')}"


def _cached_graphs(path: Path) -> list[tuple[Path, str]]:
    """Where the optimised form of the graph at ``path`` is kept, as (file, glob of all its
    entries): beside it, else (a folder that is not writable) in the cache folder.

    The name holds a digest of onnxruntime's version, the CPU and the graph
    file's path, size and modification time: an entry made for anything else
    is never read, and is removed when the entry is rebuilt.
    """
    import onnxruntime as ort

    stat = path.stat()
    key = [
        ort.__version__,
        _cpu_key(),
        str(path.resolve()),
        str(stat.st_size),
        str(stat.st_mtime_ns),
    ]
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:16]
    name = glob.escape(path.name)
    return [
        (path.parent / f".{path.name}.optimized-{digest}.onnx", f".{name}.optimized-*.onnx"),
        (cache_dir() / "onnx" / f"{path.name}.optimized-{digest}.onnx", f"{name}.optimized-*.onnx"),
    ]


def onnx_session(path: str | os.PathLike):
    """An onnxruntime CPU session of the graph at ``path``, its optimisation done once.

    onnxruntime optimises a graph each time it opens it, which is most of a
    short command's time. The first session writes its optimised graph
    (``_cached_graphs``, atomically); later ones open that with the
    optimisations off. An entry that cannot be written or read is skipped
    (the session then optimises as usual).
    """
    import onnxruntime as ort

    path = Path(path)
    providers = ["CPUExecutionProvider"]
    entries = _cached_graphs(path) if path.is_file() else []
    for entry, _ in entries:
        if entry.is_file():
            options = session_options()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                return ort.InferenceSession(str(entry), options, providers=providers)
            except Exception:  # noqa: BLE001 - a damaged entry is rebuilt below
                log.debug("rebuilding the damaged optimised graph %s", entry)
    from hear_ced.common.files import atomic_path  # only to write: filelock costs an import

    for entry, pattern in entries:
        try:
            with atomic_path(entry) as scratch:
                options = session_options()
                options.optimized_model_filepath = str(scratch)
                session = ort.InferenceSession(str(path), options, providers=providers)
        except OSError as exc:
            log.debug("cannot keep the optimised graph in %s: %s", entry.parent, exc)
            continue
        for stale in entry.parent.glob(pattern):
            if stale != entry:
                stale.unlink(missing_ok=True)
        return session
    return ort.InferenceSession(str(path), session_options(), providers=providers)


class OnnxTagger(Tagger):
    """An exported probabilities graph (``hear-ced export-onnx``) run with onnxruntime.

    Each pass is given its input with context and ``CONTEXT_FRAMES`` for the
    graph's ``context_frames`` input (``hear_ced.export.WaveformGraph``).
    """

    output = "probabilities"  # the graph output this class runs

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            self.session = onnx_session(path)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"cannot load ONNX graph {path}: {exc}") from exc
        meta = _metadata(self.session)
        kind = meta.get("output")
        if kind != self.output and kind in GRAPH_COMMANDS:
            raise ValueError(
                f"{path} is a graph of {kind} (export-onnx --output {kind}), not of "
                f"{self.output}: use it with {GRAPH_COMMANDS[kind]} {path}"
            )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        problems = []
        if [(i.name, len(i.shape)) for i in inputs] != [("waveform", 2)]:
            problems.append("its input is not waveform (batch, samples)")
        if [(o.name, len(o.shape)) for o in outputs] != [(self.output, 2)] or not isinstance(
            outputs[0].shape[-1], int
        ):
            problems.append(f"its output is not {self.output} (batch, size)")
        missing = [key for key in REQUIRED_METADATA if key not in meta]
        if missing:
            problems.append(f"its metadata lacks {', '.join(missing)}")
        if problems:
            raise ValueError(f"not a hear-ced export: {path}: {'; '.join(problems)}")
        diff, limit = meta.get("int8_max_diff"), meta.get("int8_limit")
        if diff is not None and limit is not None and float(diff) > float(limit):
            log.warning(
                "%s is an int8 graph %s from float32 on the probe clips, beyond the limit %s "
                "(exported with --allow-inaccurate); its float32 graph is the accurate one",
                path,
                diff,
                limit,
            )
        config = json.loads(meta["ced_config"])
        self.target_length = int(config["target_length"])
        self.patch_size = int(config["patch_size"])
        self.num_classes = int(outputs[0].shape[-1])
        stored = json.loads(meta["labels"]) if "labels" in meta else None
        self.labels = known_class_names(stored, self.num_classes)
        self._context = np.array(CONTEXT_FRAMES, dtype=np.int64)

    def run_passes(self, inputs: np.ndarray) -> np.ndarray:
        feed = {"waveform": inputs.astype(np.float32, copy=False), CONTEXT_INPUT: self._context}
        return self.session.run(None, feed)[0]


class OnnxEmbedder(OnnxTagger):
    """An exported embeddings graph: ``probabilities`` of a clip are its scene embedding.

    The graph gives each pass's mean token; averaged over the passes weighted
    by time patches (``average_passes``), that is the mean of all the clip's
    tokens, the scene embedding of ``hear_ced.hear``'s default method. Each
    pass has its own 120 dB floor, as in tagging, where that method floors
    the whole clip at once: the two differ only in clips longer than one
    pass with passes far quieter than the loudest.
    """

    output = "embeddings"
