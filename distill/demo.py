"""The whole distillation pipeline on a synthetic corpus, small enough for a CPU.

synth -> prepare -> supervised teachers -> save-logits -> verify-logits ->
label-free consistent student -> the same student on hard labels ->
evaluation of teachers, ensemble and both students -> report.md / report.json.

Every stage records its result and duration in ``stages.json`` as it
finishes, so an interrupted demo resumes at the first unfinished stage (and
the training runs inside a stage resume from their own last state).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.checkpointing import write_json
from distill.config import (
    ConfigError,
    TrainConfig,
    apply_override,
    config_from_dict,
    from_dict,
    to_plain,
)
from distill.data import prepare, read_table, write_table_atomic
from distill.evaluate import evaluate_checkpoint
from distill.extract import SaveLogitsConfig, save_logits, verify_logits
from distill.synth import synthesize
from distill.train import train
from hear_ced.checkpoints import load_model_file

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


@dataclass
class CorpusConfig:
    # The teachers learn from all n_train labelled clips; the students see
    # only the first student_clips of them (0: all), as AS-2M teachers
    # taught AS-20K students in the paper.
    n_train: int = 1200
    student_clips: int = 400
    n_eval: int = 300
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
    # The student's training settings; data paths and targets are filled in.
    student: TrainConfig = field(default_factory=TrainConfig)
    # The claim checked by the report: distilled mAP >= ensemble mAP - margin.
    margin: float = 0.12


def load_demo_config(
    path: str | Path = DEMO_CONFIG, overrides: Sequence[str] = (), cls: type = DemoConfig
) -> DemoConfig:
    """The demo plan from YAML plus ``key.sub=value`` overrides, validated."""
    tree = yaml.safe_load(Path(path).read_text()) or {}
    for assignment in overrides:
        apply_override(tree, assignment)
    cfg = from_dict(cls, tree)
    if not cfg.teachers.sizes or any(len(size) != 3 for size in cfg.teachers.sizes):
        raise ConfigError("teachers.sizes: give one [embed_dim, depth, num_heads] per teacher")
    return cfg


class Stages:
    """Runs named stages once; results and durations persist in ``stages.json``.

    The plan is stored in ``plan.json``; resuming under another plan is
    refused, since finished stages would silently belong to the old one.
    """

    def __init__(self, out: Path, plan: dict, name: str = "demo") -> None:
        self.name = name
        self.path = out / "stages.json"
        self.done: dict[str, dict] = {}
        plan_path = out / "plan.json"
        if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
            raise ConfigError(
                f"{out} holds a run of another plan ({plan_path}); use another output folder"
            )
        write_json(plan_path, plan)
        if self.path.exists():
            self.done = json.loads(self.path.read_text())

    def run(self, name: str, work: Callable[[], Any]) -> Any:
        if name in self.done:
            print(f"[{self.name}] {name}: done earlier, skipped")
            return self.done[name]["result"]
        print(f"[{self.name}] {name} ...", flush=True)
        started = time.perf_counter()
        result = work()
        self.done[name] = {"seconds": round(time.perf_counter() - started, 2), "result": result}
        write_json(self.path, self.done)
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
    return config_from_dict(tree)


def make_corpus(out: Path, corpus: CorpusConfig) -> dict[str, str]:
    """Synthesize and prepare; returns the teachers', students' and eval TSVs."""
    made = synthesize(
        out / "corpus", corpus.n_train, corpus.n_eval, corpus.clip_seconds, corpus.seed
    )
    train_tsv = prepare(made.train_tsv, out / "prepared", progress=False).labels_tsv
    eval_tsv = prepare(made.eval_tsv, out / "prepared", progress=False).labels_tsv
    student_tsv = train_tsv
    if 0 < corpus.student_clips < corpus.n_train:
        student_tsv = train_tsv.with_name("student_train.tsv")
        subset = read_table(train_tsv, required=("filename", "hdf5path"))[: corpus.student_clips]
        write_table_atomic(subset, student_tsv)
    return {"train_tsv": str(train_tsv), "student_tsv": str(student_tsv), "eval_tsv": str(eval_tsv)}


def student_config(cfg: DemoConfig, data: dict[str, str], out_dir: Path, **changes) -> TrainConfig:
    """The student's settings on its share of the corpus, with further dotted changes."""
    base = {
        "data.train_tsv": data["student_tsv"],
        "data.eval_tsv": data["eval_tsv"],
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
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.final_checkpoint, path)
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


def _parameters(path: str) -> int:
    return sum(p.numel() for p in load_model_file(path).parameters())


def run_demo(out_dir: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Run (or resume) the demo in ``out_dir``; returns the report as a dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_demo_config(DEMO_CONFIG, overrides)
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

    def distill() -> dict:
        run_cfg = student_config(
            cfg,
            data,
            out / "runs" / "student_distilled",
            **{"targets.kind": "logits", "targets.logits_dir": storage["logits_dir"]},
        )
        result = train(run_cfg)
        shutil.copyfile(result.final_checkpoint, out / "student.safetensors")
        return {"checkpoint": str(out / "student.safetensors"), "train_seconds": result.seconds}

    distilled = stages.run("student_distilled", distill)

    def hard_labels() -> dict:
        run_cfg = student_config(
            cfg, data, out / "runs" / "student_labels", **{"targets.kind": "labels"}
        )
        result = train(run_cfg)
        return {"checkpoint": str(result.final_checkpoint), "train_seconds": result.seconds}

    baseline = stages.run("student_labels", hard_labels)

    def evaluate_all() -> dict:
        eval_tsv = data["eval_tsv"]
        ensemble = evaluate_checkpoint(teachers, eval_tsv)
        return {
            "teachers": ensemble["members"],
            "teacher_ensemble": ensemble["ensemble"],
            "distilled_student": evaluate_checkpoint(distilled["checkpoint"], eval_tsv)["model"],
            "hard_label_student": evaluate_checkpoint(baseline["checkpoint"], eval_tsv)["model"],
        }

    results = stages.run("evaluate", evaluate_all)
    report = build_report(
        cfg, out, stages, storage, verified, results, teachers, distilled, baseline
    )
    report["this_invocation_seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / "report.json", report)
    return report


def build_report(
    cfg, out, stages, storage, verified, results, teachers, distilled, baseline
) -> dict:
    """report.json content and report.md next to it."""
    ensemble = results["teacher_ensemble"]["mAP"]
    student = results["distilled_student"]["mAP"]
    hard = results["hard_label_student"]["mAP"]
    claim = {
        "margin": cfg.margin,
        "distilled_within_margin_of_ensemble": student >= ensemble - cfg.margin,
        "distilled_above_hard_label_student": student > hard,
    }
    claim["holds"] = all(v for k, v in claim.items() if k != "margin")
    seconds = stages.seconds()
    report = {
        "config": to_plain(cfg),
        "results": results,
        "claim": claim,
        "storage": storage,
        "verify_logits": verified,
        "parameters": {
            "teachers": [_parameters(t) for t in teachers],
            "student": _parameters(distilled["checkpoint"]),
        },
        "stage_seconds": seconds,
        "total_stage_seconds": round(sum(seconds.values()), 2),
        "student_checkpoint": str(out / "student.safetensors"),
        "report_md": str(out / "report.md"),
    }
    (out / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict) -> str:
    r = report["results"]
    cfg = report["config"]
    claim = report["claim"]
    params = report["parameters"]
    rows = [(f"teacher {i}", m, params["teachers"][i]) for i, m in enumerate(r["teachers"])]
    rows.append(
        (f"teacher ensemble ({len(r['teachers'])})", r["teacher_ensemble"], sum(params["teachers"]))
    )
    rows.append(
        ("student, distilled (label-free, consistent)", r["distilled_student"], params["student"])
    )
    rows.append(("student, hard labels", r["hard_label_student"], params["student"]))
    lines = [
        "# CED distillation demo",
        "",
        f"Synthetic corpus: {cfg['corpus']['n_train']} training and {cfg['corpus']['n_eval']} "
        f"evaluation clips of {cfg['corpus']['clip_seconds']} s. Logits: K={report['storage']['k']}, "
        f"E={report['storage']['epochs']} stored epochs; the student trains "
        f"{cfg['student']['optim']['epochs']} epochs.",
        "",
        "| model | parameters | mAP | mAUC | d' |",
        "|---|---|---|---|---|",
    ]
    for name, m, n in rows:
        lines.append(f"| {name} | {n:,} | {m['mAP']:.4f} | {m['mAUC']:.4f} | {m['d_prime']:.3f} |")
    verdict = "holds" if claim["holds"] else "does NOT hold"
    lines += [
        "",
        f"Claim ({verdict}): the distilled student is within {claim['margin']:.2f} mAP of the "
        f"teacher ensemble ({'yes' if claim['distilled_within_margin_of_ensemble'] else 'no'}) "
        f"and above the hard-label student "
        f"({'yes' if claim['distilled_above_hard_label_student'] else 'no'}).",
        "",
        f"Logit storage: {report['storage']['payload_bytes_per_sample_epoch']} bytes of payload per "
        f"sample-epoch (K*4 + 4), {report['storage']['file_bytes_per_sample_epoch']} bytes per "
        f"sample-epoch in the HDF5 epoch files; {report['storage']['total_bytes']:,} bytes in all. "
        f"verify-logits recomputed {report['verify_logits']['checked_rows']} rows "
        f"(max |error| {report['verify_logits']['max_value_error']:.1e}).",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in report["stage_seconds"].items()]
    lines += [f"| total | {report['total_stage_seconds']:.1f} |", ""]
    return "\n".join(lines)
