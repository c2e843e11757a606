"""The whole distillation pipeline on a synthetic corpus, small enough for a CPU.

synth -> prepare -> supervised teachers -> save-logits -> verify-logits ->
label-free consistent students and the same students on hard labels, over
several paired seeds -> evaluation of teachers, ensemble and students on the
test split -> report.md / report.json. The students pick their checkpoints
on a validation split of their own; the test split is used only to report.

The folder's ``plan.json`` names the plan it holds (another plan is refused).
An interrupted demo resumes through each command's own record: prepare keeps
its finished shards, a training run resumes from its last state (a finished
one returns its ``result.json``), save-logits keeps its stored blocks; the
corpus, verification and evaluation are recomputed, deterministically.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hear_ced.checkpoints import load_model_file
from hear_ced.common.config import ConfigError, from_dict, load_config, set_key, to_plain
from hear_ced.common.files import claim_folder, remove_tree, write_bytes, write_json, write_text
from hear_ced.common.tables import markdown_table
from hear_ced.distill.config import TrainConfig
from hear_ced.distill.data import prepare, read_table, write_table_atomic
from hear_ced.distill.evaluate import agreement, evaluate_checkpoint
from hear_ced.distill.extract import SaveLogitsConfig, save_logits, verify_logits
from hear_ced.distill.stats import compare_paired, sign_test
from hear_ced.distill.synth import synthesize
from hear_ced.distill.train import TrainResult, train

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


# The plan's sections; every value comes from the plan file (configs/demo.yaml explains them).
@dataclass
class CorpusConfig:
    n_train: int  # the teachers' labelled clips
    student_clips: int  # the first clips of those the students see (0: all)
    n_eval: int  # the test split
    n_valid: int  # model selection
    clip_seconds: float
    seed: int


@dataclass
class TeachersConfig:
    sizes: list[tuple[int, int, int]]  # [embed_dim, depth, num_heads] per teacher
    epochs: int
    lr: float
    batch_size: int


@dataclass
class LogitsConfig:
    k: int
    epochs: int


@dataclass
class DemoConfig:
    corpus: CorpusConfig
    teachers: TeachersConfig
    logits: LogitsConfig
    # The students' training settings; every run fills in its data, targets,
    # seed and folder (``run_config``).
    student: TrainConfig
    seeds: int  # seed s pairs a distilled and a hard-label student (init, data order)

    def validate(self) -> None:
        if self.seeds < 1:
            raise ConfigError("give at least one student seed", key="seeds")
        if not self.teachers.sizes:
            raise ConfigError("give at least one teacher", key="teachers.sizes")


# What every run fills in must still be there for the student section to be a
# complete training config when the plan is checked: a stand-in data path and
# the hard-label student's targets.
_FILLED_IN_PER_RUN = ("student.data.train_tsv=per-run", "student.targets.kind=labels")


def load_demo_config(overrides: Sequence[str] = ()) -> DemoConfig:
    """The demo plan (configs/demo.yaml) plus ``key.sub=value`` overrides, validated."""
    return load_config(DemoConfig, DEMO_CONFIG, [*_FILLED_IN_PER_RUN, *overrides])


def make_corpus(out: Path, corpus: CorpusConfig) -> dict[str, str]:
    """Synthesize and prepare; returns the teachers', students', validation and test TSVs."""
    root = synthesize(
        out / "corpus",
        corpus.n_train,
        corpus.n_eval,
        corpus.clip_seconds,
        corpus.seed,
        n_valid=corpus.n_valid,
    )
    splits = ("train", "eval", "valid") if corpus.n_valid else ("train", "eval")
    prepared = {
        f"{split}_tsv": prepare(root / f"{split}.tsv", out / "prepared", progress=False).labels_tsv
        for split in splits
    }
    prepared.setdefault("valid_tsv", prepared["eval_tsv"])
    prepared["student_tsv"] = prepared["train_tsv"]
    if 0 < corpus.student_clips < corpus.n_train:
        prepared["student_tsv"] = prepared["train_tsv"].with_name("student_train.tsv")
        rows = read_table(prepared["train_tsv"], required=("filename", "hdf5path"))
        write_table_atomic(rows[: corpus.student_clips], prepared["student_tsv"])
    return {name: str(path) for name, path in prepared.items()}


def run_config(cfg: DemoConfig, data: dict[str, str], out_dir: Path, **changes) -> TrainConfig:
    """The plan's student settings on the students' share of the corpus, with dotted changes.

    Every run validates (and keeps its best checkpoints) on the validation split.
    """
    tree = to_plain(cfg.student)
    base = {
        "data.train_tsv": data["student_tsv"],
        "data.eval_tsv": data["valid_tsv"],
        "data.clip_seconds": cfg.corpus.clip_seconds,
        "out_dir": str(out_dir),
    }
    for key, value in (base | changes).items():
        set_key(tree, key, value)
    return from_dict(TrainConfig, tree)


def _parameters(path: str) -> int:
    return sum(p.numel() for p in load_model_file(path).parameters())


def run_demo(out_dir: str | Path, overrides: Sequence[str] = (), restart: bool = False) -> dict:
    """Run (or resume) the demo in ``out_dir``; returns the report as a dict.

    ``restart`` deletes ``out_dir`` first.
    """
    out = Path(out_dir)
    cfg = load_demo_config(overrides)  # a bad plan deletes nothing
    if restart:
        remove_tree(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_folder(out, to_plain(cfg))
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def stage(name: str, work: Callable[[], Any]) -> Any:
        """``work()``, logged and timed; a training run's time is the one it recorded."""
        log.info("[demo] %s ...", name)
        begun = time.perf_counter()
        result = work()
        spent = result.seconds if isinstance(result, TrainResult) else time.perf_counter() - begun
        seconds[name] = round(spent, 2)
        return result

    data = stage("corpus", lambda: make_corpus(out, cfg.corpus))

    # Supervised teachers on every labelled clip; their weights go to out/teachers.
    teachers = []
    for index, (embed_dim, depth, num_heads) in enumerate(cfg.teachers.sizes):
        changes = {
            "data.train_tsv": data["train_tsv"],
            "model.embed_dim": embed_dim,
            "model.depth": depth,
            "model.num_heads": num_heads,
            "targets.kind": "labels",
            "optim.lr": cfg.teachers.lr,
            "optim.epochs": cfg.teachers.epochs,
            "optim.batch_size": cfg.teachers.batch_size,
            "seed": index,
        }
        run = run_config(cfg, data, out / "runs" / f"teacher{index}", **changes)
        result = stage(f"teacher{index}", lambda run=run: train(run))
        path = out / "teachers" / f"teacher{index}.safetensors"
        write_bytes(path, Path(result.final_checkpoint).read_bytes())
        teachers.append(str(path))

    def store_logits() -> dict:
        """save-logits of the ensemble on the students' clips; where, and at what storage cost."""
        result = save_logits(
            SaveLogitsConfig(
                teachers=teachers,
                train_tsv=data["student_tsv"],
                out_dir=str(out / "logits"),
                k=cfg.logits.k,
                epochs=cfg.logits.epochs,
                augment=cfg.student.augment,
                batch_size=cfg.student.optim.batch_size,
                run_seed=cfg.corpus.seed,
                clip_seconds=cfg.corpus.clip_seconds,
                min_chunk_seconds=cfg.student.data.min_chunk_seconds,
            ),
            progress=cfg.student.progress,
        )
        return {
            "logits_dir": str(out / "logits"),
            "rows": result.n_rows,
            "epochs": result.epochs,
            "k": cfg.logits.k,
            "payload_bytes_per_sample_epoch": 4 * cfg.logits.k + 4,
            "file_bytes_per_sample_epoch": round(result.bytes_per_sample_epoch, 2),
            "total_bytes": result.total_bytes,
        }

    storage = stage("save_logits", store_logits)

    def verify() -> dict:
        report = verify_logits(storage["logits_dir"], n_rows=64, seed=cfg.corpus.seed)
        if not report.ok:
            raise RuntimeError("stored logits do not verify: " + "; ".join(report.mismatches))
        return {"checked_rows": report.checked, "max_value_error": report.max_value_error}

    verified = stage("verify_logits", verify)

    targets = {
        "distilled": {"targets.kind": "logits", "targets.logits_dir": storage["logits_dir"]},
        "labels": {"targets.kind": "labels"},
    }
    students = {kind: [] for kind in targets}
    for kind, changes in targets.items():
        for seed in range(cfg.seeds):
            name = f"student_{kind}_seed{seed}"
            run = run_config(cfg, data, out / "runs" / name, **changes, seed=seed)
            students[kind].append(str(stage(name, lambda run=run: train(run)).final_checkpoint))
    write_bytes(out / "student.safetensors", Path(students["distilled"][0]).read_bytes())

    def evaluate_all() -> dict:
        eval_tsv = data["eval_tsv"]
        ensemble = evaluate_checkpoint(teachers, eval_tsv)
        return (
            {
                "teachers": ensemble["members"],
                "teacher_ensemble": ensemble["ensemble"],
            }
            | {
                f"{kind}_students": [
                    evaluate_checkpoint([path], eval_tsv)["model"] for path in paths
                ]
                for kind, paths in students.items()
            }
            | {
                # Without labels: how close each student comes to the teacher ensemble.
                "agreement": {
                    kind: [agreement(path, teachers, [eval_tsv]) for path in paths]
                    for kind, paths in students.items()
                }
            }
        )

    results = stage("evaluate", evaluate_all)
    distilled = [m["mAP"] for m in results["distilled_students"]]
    hard = [m["mAP"] for m in results["labels_students"]]
    report = {
        "config": to_plain(cfg),
        "results": results,
        "claim": compare_paired(distilled, hard),
        "storage": storage,
        "verify_logits": verified,
        "parameters": {
            "teachers": [_parameters(t) for t in teachers],
            "student": _parameters(students["distilled"][0]),
        },
        "stage_seconds": seconds,
        "total_stage_seconds": round(sum(seconds.values()), 2),
        "student_checkpoint": str(out / "student.safetensors"),
        "report_md": str(out / "report.md"),
    }
    write_text(out / "report.md", render_markdown(report))
    report["this_invocation_seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / "report.json", report, sort_keys=True)
    return report


def caveats(claim: dict) -> str:
    """The paired claim, and the smallest p this run's number of seeds can reach at all.

    ``claim`` is ``hear_ced.distill.stats.compare_paired(distilled, hard labels)``; the
    smallest reachable p is its sign test of every seed favouring the
    distilled student.
    """
    seeds = len(claim["differences"])
    return (
        f"Distilled minus hard labels: mean {claim['mean']:+.4f}, ahead in {claim['wins']} of "
        f"{seeds} seed(s); one-sided sign test p = {claim['p_value']:.3f}, where the smallest p "
        f"{seeds} seed(s) can reach is {sign_test([1.0] * seeds):.4g}.\n"
    )


def render_markdown(report: dict) -> str:
    r = report["results"]
    cfg = report["config"]
    params = report["parameters"]
    storage = report["storage"]
    rows = [
        (f"teacher {i}", f"{n:,}", f"{m['mAP']:.4f}")
        for i, (n, m) in enumerate(zip(params["teachers"], r["teachers"], strict=True))
    ]
    ensemble_map = r["teacher_ensemble"]["mAP"]
    rows.append(
        (f"teacher ensemble ({len(rows)})", f"{sum(params['teachers']):,}", f"{ensemble_map:.4f}")
    )
    distilled = [m["mAP"] for m in r["distilled_students"]]
    hard = [m["mAP"] for m in r["labels_students"]]
    for name, scores in (("distilled (label-free, consistent)", distilled), ("hard labels", hard)):
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        mean = f"{statistics.fmean(scores):.4f} ± {sd:.4f}"
        rows.append((f"student, {name}", f"{params['student']:,}", mean))
    lines = [
        "# CED distillation demo",
        "",
        f"Synthetic corpus: {cfg['corpus']['n_train']} training clips (students: the first "
        f"{cfg['corpus']['student_clips']}), {cfg['corpus']['n_valid']} validation clips "
        f"(checkpoint selection) and {cfg['corpus']['n_eval']} test clips (reported) of "
        f"{cfg['corpus']['clip_seconds']} s. Logits: K={storage['k']}, "
        f"E={storage['epochs']} stored epochs; students train "
        f"{cfg['student']['optim']['epochs']} epochs, {cfg['seeds']} paired seed(s).",
        "",
        "Test mAP (students: mean ± sample standard deviation over seeds):",
        "",
        markdown_table(["model", "parameters", "test mAP"], rows),
        "",
        markdown_table(
            ["seed", "distilled", "hard labels", "difference"],
            [
                (s, f"{d:.4f}", f"{h:.4f}", f"{d - h:+.4f}")
                for s, (d, h) in enumerate(zip(distilled, hard, strict=True))
            ],
        ),
        "",
        caveats(report["claim"]),
        "Agreement with the teacher ensemble on the test clips, without their labels "
        "(mean over seeds; `ced-distill agreement`): mAP against the ensemble's decisions, "
        "top-1 agreement, BCE and KL to its probabilities:",
        "",
        markdown_table(
            ["student", "mAP", "top-1", "BCE", "KL"],
            [
                (
                    kind,
                    *(
                        f"{statistics.fmean(m[key] for m in rows):.4f}"
                        for key in ("mAP", "top1", "bce", "kl")
                    ),
                )
                for kind, rows in r["agreement"].items()
            ],
        ),  # fmt: skip
        "",
        f"Logit storage: {storage['payload_bytes_per_sample_epoch']} bytes of payload per "
        f"sample-epoch (K*4 + 4), {storage['file_bytes_per_sample_epoch']} bytes per "
        f"sample-epoch in the HDF5 epoch files; {storage['total_bytes']:,} bytes in all. "
        f"verify-logits recomputed {report['verify_logits']['checked_rows']} rows "
        f"(max |error| {report['verify_logits']['max_value_error']:.1e}).",
        "",
        markdown_table(
            ["stage", "seconds"],
            [(name, f"{sec:.1f}") for name, sec in report["stage_seconds"].items()]
            + [("total", f"{report['total_stage_seconds']:.1f}")],
        ),
        "",
    ]
    return "\n".join(lines)
