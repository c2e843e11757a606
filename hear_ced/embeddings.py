"""Embeddings of audio files, written for numpy: ``hear-ced embed``.

The output folder holds, for each audio file NAME (its path under the folder
it was found in, or its file name when given on its own):

* ``NAME.scene.npy``: (D,) float32, the scene embedding;
* ``NAME.timestamps.npy``: (T, D) float32, the timestamp embeddings, and
  ``NAME.times.npy``: (T,) float32, their times in ms;

and for the whole run ``index.csv`` (one row per embedded file, in input
order: file, name, seconds, timestamps) with ``scene.npy`` (N, D), the scene
embeddings of its rows stacked, and ``embed.json``, the settings.

Why this layout: ``numpy.load`` reads every file without this package, a
long file's timestamps can be memory-mapped, and one file per audio file and
kind, each written atomically, is what lets a run stop anywhere and resume by
skipping the files whose outputs exist. The stacked ``scene.npy`` is what a
classifier over a folder wants in one call.

Embeddings are the HEAR modules' (``hear_ced.hear``: the default method, or
the published one), computed by their own functions on each file read whole,
files of one length ``batch_size`` at a time. An exported embeddings graph
(``hear_ced.runtime.OnnxEmbedder``, torch-free) gives the scene embedding,
with long files read and embedded block by block as tagging does.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from hear_ced.audio import Outcome, header_samples, read_outcomes
from hear_ced.common.files import atomic_path, write_text
from hear_ced.runtime import Tagger, length_batches, tag_files
from hear_ced.specs import SAMPLE_RATE

log = logging.getLogger(__name__)

KINDS = ("scene", "timestamps")
# The arrays each kind writes per file.
ARRAYS = {"scene": ("scene",), "timestamps": ("times", "timestamps")}
INDEX_COLUMNS = ("file", "name", "seconds", "timestamps")

Arrays = dict[str, np.ndarray]


def output_names(paths: Sequence[str], inputs: Iterable[str]) -> list[str]:
    """Each file's NAME: its path under the input folder it was found in, else its file name.

    Two files that would share a name are refused, naming both.
    """
    folders = [Path(item) for item in inputs if Path(item).is_dir()]
    names, seen = [], {}
    for path in map(Path, paths):
        folder = next((f for f in folders if f in path.parents), None)
        name = path.relative_to(folder).as_posix() if folder else path.name
        if name in seen:
            raise ValueError(
                f"{seen[name]} and {path} would both be written as {name}: "
                "embed them into separate output folders"
            )
        seen[name] = path
        names.append(name)
    return names


def array_paths(out: Path, name: str, kinds: Sequence[str]) -> dict[str, Path]:
    return {a: out / f"{name}.{a}.npy" for kind in kinds for a in ARRAYS[kind]}


def is_done(out: Path, name: str, kinds: Sequence[str]) -> bool:
    return all(p.exists() for p in array_paths(out, name, kinds).values())


def write_arrays(out: Path, name: str, arrays: Arrays) -> None:
    """Each array atomically: a file counts as done only once all of its arrays are there."""
    for array, values in arrays.items():
        with atomic_path(out / f"{name}.{array}.npy") as tmp:
            np.save(tmp, values)


def torch_embeddings(
    embedder, paths: Iterable[str], kinds: Sequence[str], batch_size: int
) -> Iterator[Outcome[Arrays]]:
    """Each file's arrays by the HEAR API functions (``hear_ced.hear``), files of one
    length ``batch_size`` at a time; an unreadable file gets its error."""
    import torch

    from hear_ced.hear import get_scene_embeddings, get_timestamp_embeddings

    def length(outcome: Outcome[np.ndarray]) -> int:
        return -1 if outcome.error is not None else outcome.result.size

    for group in length_batches(read_outcomes(paths), length, batch_size, batch_size):
        good = [o for o in group if o.error is None]
        yield from (o for o in group if o.error is not None)
        if not good:
            continue
        audio = torch.from_numpy(np.stack([o.result for o in good]))
        arrays: Arrays = {}
        if "scene" in kinds:
            arrays["scene"] = get_scene_embeddings(audio, embedder).cpu().numpy()
        if "timestamps" in kinds:
            vectors, times = get_timestamp_embeddings(audio, embedder)
            arrays["timestamps"], arrays["times"] = vectors.cpu().numpy(), times.cpu().numpy()
        for i, o in enumerate(good):
            yield Outcome(o.path, {name: values[i] for name, values in arrays.items()})


def graph_embeddings(
    graph: Tagger, paths: Iterable[str], batch_size: int
) -> Iterator[Outcome[Arrays]]:
    """Each file's scene embedding from an exported embeddings graph (``tag_files``)."""
    for o in tag_files(graph, paths, batch_size):
        yield o if o.error is not None else Outcome(o.path, {"scene": o.result})


def write_index(out: Path, paths: Sequence[str], names: Sequence[str], kinds: Sequence[str]) -> int:
    """``index.csv`` and the stacked ``scene.npy`` of every file done; returns their count."""
    rows, scenes = [], []
    for path, name in zip(paths, names, strict=True):
        if not is_done(out, name, kinds):
            continue
        samples = header_samples(path)
        seconds = "" if samples is None else round(samples / SAMPLE_RATE, 4)
        frames = ""
        if "timestamps" in kinds:
            frames = len(np.load(out / f"{name}.times.npy", mmap_mode="r"))
        if "scene" in kinds:
            scenes.append(np.load(out / f"{name}.scene.npy"))
        rows.append((path, name, seconds, frames))
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([INDEX_COLUMNS, *rows])
    write_text(out / "index.csv", text.getvalue())
    if scenes:
        with atomic_path(out / "scene.npy") as tmp:
            np.save(tmp, np.stack(scenes))
    return len(rows)
