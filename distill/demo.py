"""The whole distillation pipeline on a synthetic corpus, small enough for a CPU.

synth -> prepare -> supervised teachers -> save-logits -> verify-logits ->
label-free consistent students and the same students on hard labels, over
several paired seeds -> evaluation of teachers, ensemble and students on the
test split -> report.md / report.json. The students pick their checkpoints
on a validation split of their own; the test split is used only to report.

Every stage records its result and duration in ``stages.json`` as it
finishes, so an interrupted demo resumes at the first unfinished stage (and
the training runs inside a stage resume from their own last state).
"""

from __future__ import annotations

import copy
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ced_common.config import ConfigError, from_dict, load_config, to_plain
from ced_common.files import (
    atomic_path,
    claim_folder,
    read_json,
    remove_tree,
    write_json,
    write_text,
)
from ced_common.tables import markdown_table
from distill.config import TrainConfig
from distill.data import prepare, read_table, write_table_atomic
from distill.evaluate import evaluate_checkpoint
from distill.extract import SaveLogitsConfig, save_logits, verify_logits
from distill.stats import sign_test
from distill.synth import synthesize
from distill.train import train
from hear_ced.checkpoints import load_model_file

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


@dataclass
class CorpusConfig:
    # The teachers learn from all n_train labelled clips; the students see
    # only the first student_clips of them (0: all), as AS-2M teachers
    # taught AS-20K students in the paper.
    n_train: int = 1200
    student_clips: int = 400
    n_eval: int = 300  # the test split
    n_valid: int = 200  # model selection
    clip_seconds: float = 1.0
    seed: int = 0


@dataclass
class TeachersConfig:
    # One [embed_dim, depth, num_heads] per teacher; teacher i trains with seed i.
    sizes: list[list[int]] = field(default_factory=lambda: [[128, 3, 4] for _ in range(3)])
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 16


@dataclass
class LogitsConfig:
    k: int = 24
    epochs: int = 16


@dataclass
class DemoConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    logits: LogitsConfig = field(default_factory=LogitsConfig)
    # The students' training settings; every run fills in its data, targets,
    # seed and folder (``student_config``).
    student: TrainConfig = field(default_factory=TrainConfig)
    # Student seeds: seed s pairs a distilled and a hard-label student (init, data order).
    seeds: int = 3

    def validate(self) -> None:
        if self.seeds < 1:
            raise ConfigError("give at least one student seed", key="seeds")
        if not self.teachers.sizes or any(len(size) != 3 for size in self.teachers.sizes):
            raise ConfigError(
                "give one [embed_dim, depth, num_heads] per teacher", key="teachers.sizes"
            )


# What every run fills in must still be there for the student section to be a
# complete training config when the plan is checked: a stand-in data path and
# the hard-label student's targets.
_FILLED_IN_PER_RUN = ("student.data.train_tsv=per-run", "student.targets.kind=labels")


def load_demo_config(path: str | Path = DEMO_CONFIG, overrides: Sequence[str] = ()) -> DemoConfig:
    """The demo plan from YAML plus ``key.sub=value`` overrides, validated."""
    return load_config(DemoConfig, path, [*_FILLED_IN_PER_RUN, *overrides])


class Stages:
    """Runs named stages once; results and durations persist in ``stages.json``.

    The plan is stored in ``plan.json`` (keys sorted); resuming under another
    plan is refused, since finished stages would silently belong to the old one.
    """

    def __init__(self, out: Path, plan: dict) -> None:
        self.path = out / "stages.json"
        claim_folder(out, plan)
        self.done: dict[str, dict] = read_json(self.path) if self.path.exists() else {}

    def run(self, name: str, work: Callable[[], Any]) -> Any:
        if name in self.done:
            log.info("[demo] %s: done earlier, skipped", name)
            return self.done[name]["result"]
        log.info("[demo] %s ...", name)
        started = time.perf_counter()
        result = work()
        self.done[name] = {"seconds": round(time.perf_counter() - started, 2), "result": result}
        write_json(self.path, self.done, sort_keys=True)
        return result

    def seconds(self) -> dict[str, float]:
        return {name: entry["seconds"] for name, entry in self.done.items()}


def _training_config(base: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """``base`` with dotted-key changes, validated like a loaded config."""
    tree = copy.deepcopy(to_plain(base))
    for key, value in changes.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return from_dict(TrainConfig, tree)


def make_corpus(out: Path, corpus: CorpusConfig) -> dict[str, str]:
    """Synthesize and prepare; returns the teachers', students', validation and test TSVs."""
    made = synthesize(
        out / "corpus",
        corpus.n_train,
        corpus.n_eval,
        corpus.clip_seconds,
        corpus.seed,
        n_valid=corpus.n_valid,
    )
    train_tsv = prepare(made.train_tsv, out / "prepared", progress=False).labels_tsv
    eval_tsv = prepare(made.eval_tsv, out / "prepared", progress=False).labels_tsv
    valid_tsv = eval_tsv
    if made.valid_tsv is not None:
        valid_tsv = prepare(made.valid_tsv, out / "prepared", progress=False).labels_tsv
    student_tsv = train_tsv
    if 0 < corpus.student_clips < corpus.n_train:
        student_tsv = train_tsv.with_name("student_train.tsv")
        subset = read_table(train_tsv, required=("filename", "hdf5path"))[: corpus.student_clips]
        write_table_atomic(subset, student_tsv)
    return {
        "train_tsv": str(train_tsv),
        "student_tsv": str(student_tsv),
        "valid_tsv": str(valid_tsv),
        "eval_tsv": str(eval_tsv),
    }


def student_config(cfg: DemoConfig, data: dict[str, str], out_dir: Path, **changes) -> TrainConfig:
    """The student's settings on its share of the corpus, with further dotted changes.

    Training validates (and keeps its best checkpoints) on the validation split.
    """
    base = {
        "data.train_tsv": data["student_tsv"],
        "data.eval_tsv": data["valid_tsv"],
        "data.clip_seconds": cfg.corpus.clip_seconds,
        "out_dir": str(out_dir),
    }
    return _training_config(cfg.student, base | changes)


def train_teacher(cfg: DemoConfig, data: dict[str, str], index: int, out: Path) -> dict:
    """Supervised teacher ``index``; its final weights land in ``out/teachers``."""
    embed_dim, depth, num_heads = cfg.teachers.sizes[index]
    teacher_cfg = student_config(
        cfg,
        data,
        out / "runs" / f"teacher{index}",
        **{
            "data.train_tsv": data["train_tsv"],
            "model.embed_dim": embed_dim,
            "model.depth": depth,
            "model.num_heads": num_heads,
            "targets.kind": "labels",
            "optim.lr": cfg.teachers.lr,
            "optim.epochs": cfg.teachers.epochs,
            "optim.batch_size": cfg.teachers.batch_size,
            "seed": index,
        },
    )
    result = train(teacher_cfg)
    path = out / "teachers" / f"teacher{index}.safetensors"
    _copy(result.final_checkpoint, path)
    return {"checkpoint": str(path), "train_seconds": result.seconds}


def store_logits(
    cfg: DemoConfig, data: dict[str, str], teachers: list[str], out_dir: Path, k: int, augment
) -> dict:
    """save-logits for the teacher ensemble; returns where and at what storage cost."""
    result = save_logits(
        SaveLogitsConfig(
            teachers=teachers,
            train_tsv=data["student_tsv"],
            out_dir=str(out_dir),
            k=k,
            epochs=cfg.logits.epochs,
            augment=augment,
            batch_size=cfg.student.optim.batch_size,
            run_seed=cfg.corpus.seed,
            clip_seconds=cfg.corpus.clip_seconds,
            min_chunk_seconds=cfg.student.data.min_chunk_seconds,
        ),
        progress=cfg.student.progress,
    )
    return {
        "logits_dir": str(result.path),
        "rows": result.n_rows,
        "epochs": result.epochs,
        "k": result.k,
        "payload_bytes_per_sample_epoch": 4 * result.k + 4,
        "file_bytes_per_sample_epoch": round(result.bytes_per_sample_epoch, 2),
        "total_bytes": result.total_bytes,
    }


def _copy(source: str | Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _parameters(path: str) -> int:
    return sum(p.numel() for p in load_model_file(path).parameters())


def run_demo(out_dir: str | Path, overrides: Sequence[str] = (), restart: bool = False) -> dict:
    """Run (or resume) the demo in ``out_dir``; returns the report as a dict.

    ``restart`` deletes ``out_dir`` first.
    """
    out = Path(out_dir)
    cfg = load_demo_config(DEMO_CONFIG, overrides)  # a bad plan deletes nothing
    if restart:
        remove_tree(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, to_plain(cfg))
    started = time.perf_counter()

    data = stages.run("corpus", lambda: make_corpus(out, cfg.corpus))
    teachers = [
        stages.run(f"teacher{i}", lambda i=i: train_teacher(cfg, data, i, out))["checkpoint"]
        for i in range(len(cfg.teachers.sizes))
    ]
    storage = stages.run(
        "save_logits",
        lambda: store_logits(
            cfg, data, teachers, out / "logits", cfg.logits.k, cfg.student.augment
        ),
    )

    def verify() -> dict:
        report = verify_logits(storage["logits_dir"], n_rows=64, seed=cfg.corpus.seed)
        if not report.ok:
            raise RuntimeError("stored logits do not verify: " + "; ".join(report.mismatches))
        return {"checked_rows": report.checked, "max_value_error": report.max_value_error}

    verified = stages.run("verify_logits", verify)

    def student(kind: str, seed: int) -> dict:
        targets = {"targets.kind": "labels"}
        if kind == "distilled":
            targets = {"targets.kind": "logits", "targets.logits_dir": storage["logits_dir"]}
        run_cfg = student_config(
            cfg, data, out / "runs" / f"student_{kind}_seed{seed}", **targets, seed=seed
        )
        result = train(run_cfg)
        return {
            "checkpoint": str(result.final_checkpoint),
            "valid_mAP": result.metrics["mAP"] if result.metrics else None,
            "train_seconds": result.seconds,
        }

    students = {
        kind: [
            stages.run(f"student_{kind}_seed{seed}", lambda k=kind, s=seed: student(k, s))
            for seed in range(cfg.seeds)
        ]
        for kind in ("distilled", "labels")
    }
    _copy(students["distilled"][0]["checkpoint"], out / "student.safetensors")

    def evaluate_all() -> dict:
        eval_tsv = data["eval_tsv"]
        ensemble = evaluate_checkpoint(teachers, eval_tsv)
        return {
            "teachers": ensemble["members"],
            "teacher_ensemble": ensemble["ensemble"],
        } | {
            f"{kind}_students": [
                evaluate_checkpoint(run["checkpoint"], eval_tsv)["model"] for run in runs
            ]
            for kind, runs in students.items()
        }

    results = stages.run("evaluate", evaluate_all)
    report = build_report(cfg, out, stages, storage, verified, results, teachers, students)
    report["this_invocation_seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / "report.json", report, sort_keys=True)
    return report


def paired_claim(distilled: list[float], hard: list[float]) -> dict:
    """Distilled minus hard-label test mAP per seed, and in how many seeds it is positive."""
    diffs = [d - h for d, h in zip(distilled, hard, strict=True)]
    wins = sum(d > 0 for d in diffs)
    return {
        "seeds": len(diffs),
        "differences": diffs,
        "mean_difference": statistics.fmean(diffs),
        "min_difference": min(diffs),
        "max_difference": max(diffs),
        "wins": wins,
        # One-sided sign test; with 3 seeds its smallest value is 0.125.
        "sign_test_p": sign_test(diffs),
        "distilled_above_hard_label_in_every_seed": wins == len(diffs),
    }


def build_report(cfg, out, stages, storage, verified, results, teachers, students) -> dict:
    """report.json content and report.md next to it."""
    distilled = [m["mAP"] for m in results["distilled_students"]]
    hard = [m["mAP"] for m in results["labels_students"]]
    seconds = stages.seconds()
    report = {
        "config": to_plain(cfg),
        "results": results,
        "claim": paired_claim(distilled, hard),
        "storage": storage,
        "verify_logits": verified,
        "parameters": {
            "teachers": [_parameters(t) for t in teachers],
            "student": _parameters(students["distilled"][0]["checkpoint"]),
        },
        "stage_seconds": seconds,
        "total_stage_seconds": round(sum(seconds.values()), 2),
        "student_checkpoint": str(out / "student.safetensors"),
        "report_md": str(out / "report.md"),
    }
    write_text(out / "report.md", render_markdown(report))
    return report


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


# The significance level the report holds the sign test to (as ``distill.stats.beats``).
CAVEAT_ALPHA = 0.05


def caveats(claim: dict, alpha: float = CAVEAT_ALPHA) -> str:
    """What this run's seeds can and cannot show, computed from the claim.

    The smallest reachable p is the sign test (same convention as the claim's
    ``sign_test_p``) of every seed favouring the distilled student.
    """
    seeds = claim["seeds"]
    floor = sign_test([1.0] * seeds)
    p = claim["sign_test_p"]
    if floor >= alpha:
        verdict = (
            f"so no outcome of {seeds} seed(s) can be significant at {alpha:g}; "
            "`ced-distill ablation` is the controlled experiment."
        )
    elif p < alpha:
        verdict = f"this run's p = {p:.3f} is significant at {alpha:g}."
    else:
        verdict = f"this run's p = {p:.3f} is not significant at {alpha:g}."
    return "\n".join(
        [
            "Caveats:",
            f"- {seeds} paired seed(s); per-seed differences (distilled - hard labels) "
            f"range from {claim['min_difference']:+.4f} to {claim['max_difference']:+.4f}, "
            f"mean {claim['mean_difference']:+.4f}.",
            f"- With {seeds} seed(s) the smallest p the one-sided sign test can reach is "
            f"{floor:.4g}; {verdict}",
            "",
        ]
    )


def render_markdown(report: dict) -> str:
    r = report["results"]
    cfg = report["config"]
    claim = report["claim"]
    params = report["parameters"]
    rows = [
        (f"teacher {i}", f"{m['mAP']:.4f}", params["teachers"][i])
        for i, m in enumerate(r["teachers"])
    ]
    rows.append(
        (
            f"teacher ensemble ({len(r['teachers'])})",
            f"{r['teacher_ensemble']['mAP']:.4f}",
            sum(params["teachers"]),
        )
    )
    distilled = [m["mAP"] for m in r["distilled_students"]]
    hard = [m["mAP"] for m in r["labels_students"]]
    rows.append(
        ("student, distilled (label-free, consistent)", _mean_sd(distilled), params["student"])
    )
    rows.append(("student, hard labels", _mean_sd(hard), params["student"]))
    seeds = claim["seeds"]
    lines = [
        "# CED distillation demo",
        "",
        f"Synthetic corpus: {cfg['corpus']['n_train']} training clips (students: the first "
        f"{cfg['corpus']['student_clips']}), {cfg['corpus']['n_valid']} validation clips "
        f"(checkpoint selection) and {cfg['corpus']['n_eval']} test clips (reported) of "
        f"{cfg['corpus']['clip_seconds']} s. Logits: K={report['storage']['k']}, "
        f"E={report['storage']['epochs']} stored epochs; students train "
        f"{cfg['student']['optim']['epochs']} epochs, {seeds} paired seed(s).",
        "",
        "Test mAP (students: mean ± sample standard deviation over seeds):",
        "",
        markdown_table(
            ["model", "parameters", "test mAP"], [(name, f"{n:,}", m) for name, m, n in rows]
        ),
        "",
        markdown_table(
            ["seed", "distilled", "hard labels", "difference"],
            [
                (s, f"{d:.4f}", f"{h:.4f}", f"{d - h:+.4f}")
                for s, (d, h) in enumerate(zip(distilled, hard, strict=True))
            ],
        ),
        "",
        f"Claim (distilled student above the hard-label student): holds in {claim['wins']} of "
        f"{seeds} seed(s); mean difference {claim['mean_difference']:+.4f} (range "
        f"{claim['min_difference']:+.4f} to {claim['max_difference']:+.4f}), one-sided sign "
        f"test p = {claim['sign_test_p']:.3f}.",
        "",
        caveats(claim),
        f"Logit storage: {report['storage']['payload_bytes_per_sample_epoch']} bytes of payload per "
        f"sample-epoch (K*4 + 4), {report['storage']['file_bytes_per_sample_epoch']} bytes per "
        f"sample-epoch in the HDF5 epoch files; {report['storage']['total_bytes']:,} bytes in all. "
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
