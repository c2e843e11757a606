"""The paper's consistency ablation (Table 3) and K sweep (Figure 3), small scale.

Table 3 crosses teacher augmentation (logits stored from augmented or
plain clips) with student augmentation (the student sees augmented or plain
clips), on one corpus, one teacher ensemble and one training budget, over
several student seeds. The K sweep stores the consistent logits at several
K and reports mAP next to the bytes each K costs per sample-epoch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distill.augment import AugmentConfig  # noqa: E402
from distill.checkpointing import write_json  # noqa: E402
from distill.config import to_plain  # noqa: E402
from distill.demo import (  # noqa: E402
    DemoConfig,
    Stages,
    load_demo_config,
    make_corpus,
    store_logits,
    student_config,
    train_teacher,
)
from distill.train import train  # noqa: E402

ABLATION_CONFIG = Path(__file__).parent / "configs" / "ablation.yaml"

# (name, teacher augmented, student augmented), in the paper's row order.
TABLE3_ROWS = (
    ("no augmentation", False, False),
    ("student-only augmentation", False, True),
    ("teacher-only augmentation", True, False),
    ("consistent (CED)", True, True),
)


@dataclass
class AblationConfig(DemoConfig):
    seeds: int = 2
    k_values: list[int] = field(default_factory=lambda: [1, 3, 10, 24])


def _mean_spread(values: Sequence[float]) -> tuple[float, float]:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def run_ablation(out_dir: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Run (or resume) Table 3 and the K sweep in ``out_dir``; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_demo_config(ABLATION_CONFIG, overrides, AblationConfig)
    stages = Stages(out, to_plain(cfg), name="ablation")
    data = stages.run("corpus", lambda: make_corpus(out, cfg.corpus))
    teachers = [
        stages.run(f"teacher{i}", lambda i=i: train_teacher(cfg, data, i, out))["checkpoint"]
        for i in range(len(cfg.teachers.sizes))
    ]
    augmented = cfg.student.augment
    plain = AugmentConfig.none()

    def logits(name: str, k: int, augment: AugmentConfig) -> dict:
        return stages.run(
            f"logits_{name}",
            lambda: store_logits(cfg, data, teachers, out / "logits" / name, k, augment),
        )

    def student(name: str, store: dict, augment: AugmentConfig, seed: int) -> float:
        def work() -> dict:
            run_cfg = student_config(
                cfg,
                data,
                out / "runs" / f"{name}_seed{seed}",
                **{
                    "targets.kind": "logits",
                    "targets.logits_dir": store["logits_dir"],
                    "targets.require_consistent_augment": False,
                    "augment": augment.to_dict(),
                    "seed": seed,
                },
            )
            return {"mAP": train(run_cfg).metrics["mAP"]}

        return stages.run(f"student_{name}_seed{seed}", work)["mAP"]

    stores = {
        True: logits(f"augmented_k{cfg.logits.k}", cfg.logits.k, augmented),
        False: logits(f"plain_k{cfg.logits.k}", cfg.logits.k, plain),
    }
    table3 = []
    for name, teacher_aug, student_aug in TABLE3_ROWS:
        tag = f"t{int(teacher_aug)}s{int(student_aug)}_k{cfg.logits.k}"
        student_augment = augmented if student_aug else plain
        scores = [
            student(tag, stores[teacher_aug], student_augment, seed) for seed in range(cfg.seeds)
        ]
        mean, spread = _mean_spread(scores)
        table3.append(
            {
                "row": name,
                "teacher_augmented": teacher_aug,
                "student_augmented": student_aug,
                "mAP": scores,
                "mean": mean,
                "std": spread,
            }
        )

    k_sweep = []
    for k in cfg.k_values:
        store = stores[True] if k == cfg.logits.k else logits(f"augmented_k{k}", k, augmented)
        tag = f"t1s1_k{k}"
        scores = [student(tag, store, augmented, seed) for seed in range(cfg.seeds)]
        mean, spread = _mean_spread(scores)
        k_sweep.append(
            {
                "k": k,
                "mAP": scores,
                "mean": mean,
                "std": spread,
                "payload_bytes_per_sample_epoch": store["payload_bytes_per_sample_epoch"],
                "file_bytes_per_sample_epoch": store["file_bytes_per_sample_epoch"],
            }
        )

    summary = {
        "config": to_plain(cfg),
        "table3": table3,
        "k_sweep": k_sweep,
        "stage_seconds": stages.seconds(),
        "markdown": str(out / "ablation.md"),
        "plots": [str(out / "table3.png"), str(out / "k_sweep.png")],
    }
    plot_table3(table3, out / "table3.png")
    plot_k_sweep(k_sweep, out / "k_sweep.png")
    (out / "ablation.md").write_text(render_markdown(summary))
    write_json(out / "ablation.json", summary)
    return summary


def render_markdown(summary: dict) -> str:
    cfg = summary["config"]
    seeds = cfg["seeds"]
    lines = [
        "# Consistent teaching ablation",
        "",
        f"Synthetic corpus of {cfg['corpus']['n_train']} training clips for the teachers "
        f"(students: the first {cfg['corpus']['student_clips'] or cfg['corpus']['n_train']}), "
        f"{cfg['corpus']['n_eval']} evaluation clips ({cfg['corpus']['clip_seconds']} s), "
        f"{len(cfg['teachers']['sizes'])} teacher(s), K={cfg['logits']['k']}, "
        f"E={cfg['logits']['epochs']}, student "
        f"{cfg['student']['optim']['epochs']} epochs; mean and sample standard deviation of "
        f"evaluation mAP over {seeds} student seed(s).",
        "",
        "| teacher aug. | student aug. | row | mAP mean | std | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["table3"]:
        per_seed = ", ".join(f"{v:.4f}" for v in r["mAP"])
        lines.append(
            f"| {'yes' if r['teacher_augmented'] else 'no'} | "
            f"{'yes' if r['student_augmented'] else 'no'} | {r['row']} | {r['mean']:.4f} | "
            f"{r['std']:.4f} | {per_seed} |"
        )
    lines += [
        "",
        "## K sweep (consistent teaching)",
        "",
        "| K | mAP mean | std | payload bytes / sample-epoch | file bytes / sample-epoch |",
        "|---|---|---|---|---|",
    ]
    for r in summary["k_sweep"]:
        lines.append(
            f"| {r['k']} | {r['mean']:.4f} | {r['std']:.4f} | {r['payload_bytes_per_sample_epoch']} | "
            f"{r['file_bytes_per_sample_epoch']} |"
        )
    total = sum(summary["stage_seconds"].values())
    lines += ["", f"Stage time in all: {total:.0f} s.", ""]
    return "\n".join(lines)


def plot_table3(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["row"] for r in rows]
    ax.bar(names, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=4)
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["mAP"]), r["mAP"], color="black", s=10, zorder=3)
    ax.set_ylabel("evaluation mAP")
    ax.set_title("Teacher / student augmentation")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_k_sweep(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = [r["k"] for r in rows]
    ax.errorbar(ks, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o", capsize=4)
    ax.set_xscale("log")
    ax.set_xlabel("K (stored probabilities per sample)")
    ax.set_ylabel("evaluation mAP")
    storage = ax.twinx()
    storage.plot(ks, [r["payload_bytes_per_sample_epoch"] for r in rows], "s--", color="tab:orange")
    storage.set_ylabel("bytes per sample-epoch", color="tab:orange")
    ax.set_title("Top-K stored logits")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
