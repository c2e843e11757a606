"""Tasks that share audio embed it once (Beehive's two folds hold the same recordings).

The HEAR registry lists the folders of one leaderboard task (Beehive:
``beehive_states_fold0-v2-full`` and ``fold1``). When one of them has finished
its embeddings, the other runs heareval's embeddings runner with one change:
before each split is embedded, every wav whose bytes are identical to a wav
of the finished folder takes that folder's ``<split>/<file>.embedding.npy``
(and, for event tasks, its timestamps), saved through heareval's own writers
with this task's labels; only the remaining files go to the model. heareval
then builds the split's embedding matrix from all per-file files as usual.

Identical means the same sha256 of the wav file at the module's sample rate,
so a file that differs in any byte is embedded again. The tasks of one group
embed one after another (under the run lock ``embed-<group>``), parallel jobs included, so
the second always finds the first one's files.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from hear_ced.common import logs
from hear_ced.common.files import file_sha256, write_json
from hear_ced.eval.tasks import TASK_BY_DIRECTORY

log = logging.getLogger(__name__)
RECORD = "shared-audio.json"  # in a task's embeddings folder: how many files were reused


def group_of(task: str) -> str | None:
    """Leaderboard column of a task that spans several folders, else None."""
    hear_task = TASK_BY_DIRECTORY.get(task)
    return hear_task.column if hear_task and len(hear_task.directories) > 1 else None


def twin_tasks(task_dir: Path) -> list[Path]:
    """The other folders of the task's group present beside it."""
    if group_of(task_dir.name) is None:
        return []
    hear_task = TASK_BY_DIRECTORY[task_dir.name]
    others = (task_dir.parent / name for name in hear_task.directories if name != task_dir.name)
    return [other for other in others if other.is_dir()]


def index_embeddings(twins: list[tuple[Path, Path]], sample_rate: int) -> dict[str, Path]:
    """sha256 of a wav -> its embedding files' stem, over the twins that finished embedding."""
    index: dict[str, Path] = {}
    for task_dir, embed_dir in twins:
        if not (embed_dir / ".done.embeddings").exists():
            continue
        metadata = json.loads((task_dir / "task_metadata.json").read_text())
        for split in metadata["splits"]:
            for name in json.loads((task_dir / f"{split}.json").read_text()):
                stem = embed_dir / split / name
                if Path(f"{stem}.embedding.npy").is_file():
                    wav = task_dir / str(sample_rate) / split / name
                    index.setdefault(file_sha256(wav), stem)
    return index


def reuse_twin_embeddings(embed_task_dir: Path, twins: list[tuple[Path, Path]]) -> None:
    """Make heareval's embedding loop take identical files from finished twins."""
    import numpy as np
    from heareval.embeddings import task_embeddings as heareval

    original = heareval.get_dataloader_for_embedding
    index: dict[str, Path] | None = None
    reused: dict[str, int] = {}

    def copy(source: Path, outdir: Path, name: str, labels, event: bool) -> None:
        embedding = np.load(f"{source}.embedding.npy")[None]
        if event:
            times = np.asarray(json.loads(Path(f"{source}.timestamps.json").read_text()))[None]
            frame_labels = heareval.get_labels_for_timestamps([labels], times)
            heareval.save_timestamp_embedding_and_labels(
                embedding, times, frame_labels, (name,), outdir
            )
        else:
            heareval.save_scene_embedding_and_labels(embedding, [labels], (name,), outdir)

    def get_dataloader_for_embedding(data, audio_dir, embedding, batch_size=64):
        nonlocal index
        if index is None:
            index = index_embeddings(twins, embedding.sample_rate)
        metadata = json.loads((embed_task_dir / "task_metadata.json").read_text())
        outdir = embed_task_dir / audio_dir.name
        outdir.mkdir(parents=True, exist_ok=True)
        rest = {}
        for name, labels in data.items():
            source = index.get(file_sha256(audio_dir / name))
            if source is None:
                rest[name] = labels
            else:
                copy(source, outdir, name, labels, metadata["embedding_type"] == "event")
        reused[audio_dir.name] = len(data) - len(rest)
        log.info("%s: %d of %d files from a twin task", audio_dir.name, reused[audio_dir.name],
                    len(data))  # fmt: skip
        write_json(embed_task_dir / RECORD, {"reused": sum(reused.values()), "splits": reused},
                   indent=None)  # fmt: skip
        return original(rest, audio_dir, embedding, batch_size)

    heareval.get_dataloader_for_embedding = get_dataloader_for_embedding


def main(argv: list[str]) -> None:
    """``python -m hear_ced.eval.hear_run.shared_audio PLAN_JSON RUNNER_ARGS...``."""
    from hear_ced.eval import compat

    logs.configure()
    plan = json.loads(argv[0])
    compat.install()
    reuse_twin_embeddings(
        Path(plan["embed_task_dir"]), [(Path(t), Path(e)) for t, e in plan["twins"]]
    )
    compat.run_module("heareval.embeddings.runner", argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
