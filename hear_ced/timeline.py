"""Tagging over time: windows of a recording, or of a live stream of PCM.

A recording and a stream are cut into windows by the same ``WindowStream``:
windows of ``window`` samples starting every ``hop`` samples from 0, and a
last, shorter window up to the end when the full ones stop short of it. So
``hear-ced tag --timeline`` on a file and ``hear-ced listen`` on the same
samples give the same windows. Each window is tagged exactly as a clip of
its own (``hear_ced.runtime.Tagger.probabilities``); windows of one length
are batched, which changes nothing since features are computed per clip.
Torch-free: it runs any ``hear_ced.runtime.Tagger`` (a torch CED as
``hear_ced.tagging.ModelTagger``, an exported graph as ``OnnxTagger``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from hear_ced.audio import Outcome, resampled
from hear_ced.runtime import Tagger, file_blocks, length_batches, streamed_outcome
from hear_ced.specs import HOP_LENGTH, SAMPLE_RATE
from hear_ced.tags import DEFAULT_BATCH_SIZE, Tag, select_tags

log = logging.getLogger(__name__)

# Stdin is read in blocks of this many seconds: the most a window waits for its last samples.
READ_BLOCK_SECONDS = 0.1


class WindowStream:
    """Cuts a stream of 16 kHz samples into (start sample, window) pairs, windows of
    ``window_s`` seconds every ``hop_s`` seconds.

    Only the samples from the next window's start on are kept, so memory does
    not grow with the length of the stream.
    """

    def __init__(self, window_s: float, hop_s: float) -> None:
        self.window, self.hop = round(window_s * SAMPLE_RATE), round(hop_s * SAMPLE_RATE)
        if self.window < 1 or self.hop < 1:
            raise ValueError(
                f"the window and the hop must be positive, got {window_s} and {hop_s} s"
            )
        self.pending = np.zeros(0, dtype=np.float32)  # the samples from next_start on
        self.received = 0
        self.next_start = 0
        self.last_end = 0

    def push(self, samples: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Take more samples; yield every window they complete."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        before_next = max(0, self.next_start - self.received)  # a gap when the hop is longer
        self.received += samples.size
        self.pending = np.concatenate([self.pending, samples[before_next:]])
        while self.pending.size >= self.window:
            yield self.next_start, self.pending[: self.window].copy()
            self.last_end = self.next_start + self.window
            self.next_start += self.hop
            self.pending = self.pending[self.hop :]

    def finish(self) -> Iterator[tuple[int, np.ndarray]]:
        """At the end of the stream: the shorter last window, if samples are left over."""
        if self.received > max(self.last_end, self.next_start):
            self.last_end = self.received
            yield self.next_start, self.pending.copy()

    def windows(self, blocks: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """The windows of a recording given as consecutive 16 kHz blocks, as each completes."""
        for block in blocks:
            yield from self.push(block)
        yield from self.finish()


def check_window(tagger: Tagger, window_s: float) -> None:
    """Refuse windows shorter than the model's time patch, the shortest sound it tags:
    such a window would be zero-padded to a patch and tag mostly silence."""
    patch_s = tagger.patch_size * HOP_LENGTH / SAMPLE_RATE
    if round(window_s * SAMPLE_RATE) < tagger.patch_size * HOP_LENGTH:
        raise ValueError(
            f"a window of {window_s:g} s is shorter than the model's time patch "
            f"({patch_s:g} s): give a window of at least {patch_s:g} s"
        )


def tag_windows(
    tagger: Tagger,
    windows: Iterable[tuple[int, np.ndarray]],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, end sample, class probabilities) per window, as soon as each batch is full.

    Windows of one length are batched (``hear_ced.runtime.length_batches``),
    holding ``batch_size`` at most; ``batch_size=1`` tags every window the
    moment it arrives (live streams).
    """
    for group in length_batches(windows, lambda w: w[1].size, batch_size, batch_size):
        probabilities = tagger.probabilities([wave for _, wave in group], batch_size=len(group))
        for (start, wave), probs in zip(group, probabilities, strict=True):
            yield start, start + wave.size, probs


@dataclass(frozen=True)
class Timeline:
    """Window times in seconds and every class's probability per window."""

    starts: np.ndarray
    ends: np.ndarray
    probabilities: np.ndarray  # (windows, classes)

    def windows(
        self, labels: list[str], top: int | None, threshold: float | None = None
    ) -> list[tuple[float, float, list[Tag]]]:
        """(start s, end s, tags) per window (``hear_ced.tags.select_tags``)."""
        return [
            (float(start), float(end), select_tags(p, labels, top, threshold))
            for start, end, p in zip(self.starts, self.ends, self.probabilities, strict=True)
        ]


def timeline(
    tagger: Tagger,
    blocks: Iterable[np.ndarray],
    window_s: float,
    hop_s: float,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Timeline:
    """Tag a 16 kHz mono recording, given as consecutive blocks, window by window.

    Memory holds a batch of windows, not the recording.
    """
    windows = WindowStream(window_s, hop_s).windows(blocks)
    # In time order: the shorter last window may come back before the others.
    rows = sorted(tag_windows(tagger, windows, batch_size), key=lambda r: r[0])
    if not rows:
        raise ValueError("the recording holds no audio samples")
    starts, ends, probs = zip(*rows, strict=True)
    return Timeline(
        np.array(starts) / SAMPLE_RATE,
        np.array(ends) / SAMPLE_RATE,
        np.stack(probs),
    )


def file_timelines(
    tagger: Tagger,
    paths: Iterable[str],
    window_s: float,
    hop_s: float,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[Outcome[Timeline]]:
    """Each file's timeline, or why it cannot be read; a model failure raises ``ModelError``.

    Files are decoded and resampled block by block (``hear_ced.audio.read_blocks``),
    with a progress bar for long ones (``hear_ced.runtime.file_blocks``).
    """
    WindowStream(window_s, hop_s)  # refuses a bad window or hop once, before any file
    check_window(tagger, window_s)
    for path in paths:
        blocks = file_blocks(path)
        yield streamed_outcome(path, timeline, tagger, blocks, window_s, hop_s, batch_size)


def plot_timelines(
    timelines: list[tuple[str, Timeline]], labels: list[str], path: str | os.PathLike, top: int
) -> None:
    """Lines of the ``top`` classes (highest peak probability) over time, one panel per file."""
    import matplotlib

    from hear_ced.common.files import atomic_path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(timelines), 1, figsize=(10, 3 * len(timelines)), squeeze=False, sharey=True
    )
    for ax, (name, line) in zip(axes[:, 0], timelines, strict=True):
        centres = (line.starts + line.ends) / 2
        classes = np.argsort(-line.probabilities.max(axis=0))[:top]
        for c in classes:
            ax.plot(centres, line.probabilities[:, c], marker=".", label=labels[c])
        ax.set_title(name)
        ax.set_xlabel("time (s, window centre)")
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def pcm_blocks(source: BinaryIO, rate: int) -> Iterator[np.ndarray]:
    """16 kHz float32 blocks of a raw 16-bit little-endian mono PCM stream at ``rate``.

    Blocks of READ_BLOCK_SECONDS are read as they arrive and resampled on the
    fly (``hear_ced.audio.resampled``).
    """
    if rate <= 0:
        raise ValueError(f"the sample rate must be positive, got {rate}")

    def samples() -> Iterator[np.ndarray]:
        block_bytes = 2 * max(1, round(READ_BLOCK_SECONDS * rate))
        pending = b""
        while data := source.read(block_bytes):
            pending += data
            usable = len(pending) - len(pending) % 2
            yield np.frombuffer(pending[:usable], dtype="<i2").astype(np.float32) / 32768.0
            pending = pending[usable:]
        if pending:
            log.warning("the stream ended with half a sample; it was dropped")

    yield from resampled(samples(), rate)


def tag_stream(
    tagger: Tagger, source: BinaryIO, rate: int, window_s: float, hop_s: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    """(start s, end s, probabilities) per window of a live PCM stream, as each completes.

    Memory holds one window of audio; each window is tagged on arrival, so a
    line lags its audio by at most one read block plus one model call (as
    long as the model keeps up with real time).
    """
    check_window(tagger, window_s)
    windows = WindowStream(window_s, hop_s).windows(pcm_blocks(source, rate))
    for start, end, probs in tag_windows(tagger, windows, batch_size=1):
        yield start / SAMPLE_RATE, end / SAMPLE_RATE, probs
