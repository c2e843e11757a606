"""The experiment's report: summary and statistics, Markdown (protocol first) and plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hear_ced.common.config import to_plain
from hear_ced.common.files import atomic_path, write_json, write_text
from hear_ced.common.tables import markdown_table
from hear_ced.distill.ablation.protocol import CONSISTENT, NUM_CLASSES, ROWS, SOURCES, Arm, Protocol
from hear_ced.distill.stats import beats, bootstrap_mean_interval, compare_paired


def by_source(rows: list[dict]) -> dict[str, list[dict]]:
    """The summary's rows per target source that has any, in ``SOURCES`` order."""
    groups = {source: [r for r in rows if r["source"] == source] for source in SOURCES}
    return {source: group for source, group in groups.items() if group}


def write_protocol(out: Path, p: Protocol, kind: str, command: str) -> None:
    """The report before any result exists: the protocol and decision rule only."""
    write_text(out / "ablation.md", render_protocol(p, kind, command) + "\n_Running._\n")


def write_report(out: Path, p: Protocol, kind: str, command: str, summary: dict) -> None:
    """ablation.json, ablation.md (protocol, then results) and ablation.png of a summary."""
    plot(summary, out / "ablation.png")
    write_json(out / "ablation.json", summary, sort_keys=True)
    write_text(out / "ablation.md", render_protocol(p, kind, command) + render_results(summary))


def summarise(
    p: Protocol, kind: str, arms: list[Arm], runs: dict, measured: dict, seeds: list[int]
) -> dict:
    """Per-arm test mAP over seeds, and paired comparisons against the reference arm."""
    rows = []
    for arm in arms:
        scores = [runs[(arm.key, s)]["test_mAP"] for s in seeds]
        low, high = bootstrap_mean_interval(scores, p.level)
        histories = [runs[(arm.key, s)]["history"] for s in seeds]
        rows.append(
            {
                "arm": arm.key,
                "row": arm.name,
                "source": arm.source,
                "k": arm.k,
                "teacher_augmented": arm.teacher_augmented,
                "student_augmented": arm.student_augmented,
                "test_mAP": scores,
                "mean": float(np.mean(scores)),
                "ci": [low, high],
                "best_epoch": [runs[(arm.key, s)]["best_epoch"] for s in seeds],
                "train_loss": np.mean([h["train_loss"] for h in histories], axis=0).tolist(),
                "valid_epochs": histories[0]["valid_epochs"],
                "valid_mAP": np.mean([h["valid_mAP"] for h in histories], axis=0).tolist(),
                "seconds": float(sum(runs[(arm.key, s)]["seconds"] for s in seeds)),
            }
        )
    comparisons = []
    for source, group in by_source(rows).items():
        reference = group[-1]  # consistent, or the largest K
        for other in group[:-1]:
            c = compare_paired(reference["test_mAP"], other["test_mAP"], p.level)
            comparisons.append(
                c
                | {
                    "source": source,
                    "a": reference["row"],
                    "b": other["row"],
                    "beats": beats(c, p.alpha),
                }
            )
    return {
        "kind": kind,
        "protocol": to_plain(p),
        "measured": measured,
        "seeds": seeds,
        "rows": rows,
        "comparisons": comparisons,
    }


def render_protocol(p: Protocol, kind: str, command: str) -> str:
    """The fixed protocol and decision rule, written before any run starts.

    The settings are listed as the protocol holds them; docs/ablation.md and
    docs/k_sweep.md say what each one means.
    """
    title = "Consistent teaching ablation (Table 3)" if kind == "table3" else "K sweep (Figure 3)"
    if p.teacher_training == "augmented":
        title += ", augmentation-trained teachers"
    names = [row.name for row in ROWS] if kind == "table3" else [f"K={k}" for k in p.k_values]
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        "## Protocol (fixed in `distill/ablation/protocol.py` before any result)",
        "",
        f"Rows: {', '.join(names)}. Only the wave shift and SpecAugment are toggled; mixup is "
        "off in every row.",
        "",
        markdown_table(["setting", "value"], list(to_plain(p).items())),
        "",
        f"Decision rule: row A beats row B when, over the paired per-seed differences A - B of "
        f"test mAP, the one-sided sign test (H1: A > B, ties dropped) gives p < {p.alpha} and the "
        f"{p.level:.0%} percentile-bootstrap interval of the mean difference lies above 0. "
        f"Compared: {names[-1]} minus each other row, for each source of targets.",
        "",
    ]
    return "\n".join(lines)


def _fmt_ci(ci: Sequence[float]) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] < 0 else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def render_results(summary: dict) -> str:
    m = summary["measured"]
    p = summary["protocol"]
    lines = ["## Results", ""]
    if not summary["complete"]:
        lines += [
            f"**Partial: {len(summary['seeds'])} of {p['seeds']} seeds finished.**",
            "",
        ]
    lines += [
        f"- Augmented views whose true labels differ from the clean clip's: "
        f"**{m['label_change_share']:.1%}** of {m['views']} views.",
        f"- Views whose teacher top-{p['k']} set differs from the clean clip's: "
        f"**{m['topk_change_share']:.1%}** (K={p['k']} of {NUM_CLASSES} classes for 2-3 events, "
        "so the lower ranks hold weak classes whose order moves easily); views whose set of "
        f"classes with ensemble probability >= 0.5 differs: **{m['decision_change_share']:.1%}**.",
        f"- Teacher ensemble mAP: validation {m['teacher_valid_mAP']:.4f}, test "
        f"{m['teacher_test_mAP']:.4f}.",
        "",
        f"Test mAP, mean over {len(summary['seeds'])} seeds with its {p['level']:.0%} "
        "bootstrap interval:",
        "",
        markdown_table(
            ["targets", "row", "mean", "interval", "per seed", "best epochs"],
            [
                (
                    r["source"],
                    r["row"],
                    f"{r['mean']:.4f}",
                    _fmt_ci(r["ci"]),
                    ", ".join(f"{v:.3f}" for v in r["test_mAP"]),
                    ", ".join(str(e) for e in r["best_epoch"]),
                )
                for r in summary["rows"]
            ],
        ),
        "",
        "Paired differences (per seed):",
        "",
        markdown_table(
            ["targets", "A - B", "mean", "interval", "wins / losses", "sign-test p", "A beats B"],
            [
                (
                    c["source"],
                    f"{c['a']} - {c['b']}",
                    f"{c['mean']:+.4f}",
                    f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
                    f"{c['wins']} / {c['losses']}",
                    f"{c['p_value']:.3f}",
                    "yes" if c["beats"] else "no",
                )
                for c in summary["comparisons"]
            ],
        ),
    ]
    if summary["kind"] == "k_sweep":
        payload = ", ".join(f"K={r['k']}: {4 * r['k'] + 4}" for r in summary["rows"])
        lines += ["", f"Stored payload per sample-epoch (K*4 + 4 bytes): {payload}."]
    lines += [
        "",
        f"Student runs: {sum(r['seconds'] for r in summary['rows']):.0f} s in all (summed over "
        "runs, two at a time).",
        "",
        "![Test mAP per row (mean, bootstrap interval, one grey line per seed) and validation "
        "curves](ablation.png)",
        "",
    ]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Per group: row means with intervals and one line per seed; plus the no-aug curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_source(summary["rows"])
    fig, axes = plt.subplots(1, len(groups) + 1, figsize=(5 * (len(groups) + 1), 4))
    for ax, (source, rows) in zip(axes, groups.items(), strict=False):
        x = np.arange(len(rows))
        per_seed = np.array([r["test_mAP"] for r in rows])
        for seed_line in per_seed.T:
            ax.plot(x, seed_line, color="0.75", lw=0.8, marker=".", zorder=1)
        means = np.array([r["mean"] for r in rows])
        err = np.array([[r["mean"] - r["ci"][0], r["ci"][1] - r["mean"]] for r in rows]).T
        ax.errorbar(x, means, yerr=err, fmt="o", color="tab:blue", capsize=5, zorder=3)
        ax.set_xticks(x, [r["row"].replace(" augmentation", "\naug.") for r in rows], fontsize=7)
        ax.set_ylabel("test mAP")
        ax.set_title(f"{source} targets")
    ax = axes[-1]
    shown = ("no augmentation", CONSISTENT) if summary["kind"] == "table3" else None
    for r in summary["rows"]:
        if shown is None or r["row"] in shown:
            label = r["row"] if shown is None else f"{r['source']}: {r['row']}"
            style = "--" if r["source"] == "oracle" else "-"
            ax.plot(r["valid_epochs"], r["valid_mAP"], style, marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP (mean over seeds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
