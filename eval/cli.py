"""``ced-eval``: HEAR 2021 evaluation, linear probes, reports and leaderboard rows.

Each command prints its result (a summary table, a report, a leaderboard row)
to standard output; progress and warnings go to standard error through
logging (``-q`` keeps warnings only, ``-v`` adds details).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from ced_common import logs
from ced_common.cli import FriendlyGroup, verbosity_options
from eval.make_tasks import DEFAULT_SAMPLE_RATES
from eval.runner import GRIDS, PROBES, RunSettings, run_hear, summary_table
from hear_ced.frontend import SAMPLE_RATE

log = logging.getLogger(__name__)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@verbosity_options
def main() -> None:
    """Evaluate audio embeddings on the HEAR 2021 tasks with hear-eval-kit."""


@main.command()
@click.option(
    "--module", required=True, help="HEAR module to evaluate, e.g. hear_ced.mini or hearbaseline."
)
@click.option(
    "--model", type=click.Path(dir_okay=False), default=None, help="Weights file for load_model()."
)
@click.option(
    "--tasks-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of HEAR task folders.",
)
@click.option("--tasks", multiple=True, help="Only these task folders (repeat or comma-separate).")
@click.option(
    "--grid",
    type=click.Choice(GRIDS),
    default="default",
    show_default=True,
    help="heareval's MLP hyper-parameter grid (fast/faster: fewer epochs).",
)
@click.option(
    "--grid-points",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Grid points heareval samples for model selection.",
)
@click.option(
    "--probe",
    type=click.Choice(PROBES),
    default="both",
    show_default=True,
    help="Downstream models: heareval's MLP, a logistic-regression probe, or both.",
)
@click.option(
    "--model-options",
    default="{}",
    show_default=True,
    help="JSON object of keyword arguments for load_model(), e.g. '{\"published\": true}'.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Tasks to run at once, in separate processes (they share the CPU cores / GPU).",
)
@click.option(
    "--restart", is_flag=True, help="Delete an earlier run in --out (its results) and start over."
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable)."
)
def hear(
    module, model, tasks_dir, tasks, grid, grid_points, probe, model_options, jobs, restart, out
) -> None:
    """Embed, train and score every task in TASKS_DIR; rerun to resume.

    Several invocations (or --jobs) may share one --out folder: each takes the
    tasks nobody else works on.
    """
    names = tuple(name for entry in tasks for name in entry.split(",") if name)
    try:
        options = json.loads(model_options)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})", param_hint="--model-options") from exc
    if not isinstance(options, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--model-options")
    settings = RunSettings(
        module=module, model=model, tasks_dir=Path(tasks_dir), out=Path(out), tasks=names,
        grid=grid, grid_points=grid_points, probe=probe, model_options=options, jobs=jobs,
        restart=restart,
    )  # fmt: skip
    results = run_hear(settings)
    click.echo(summary_table(results))
    failed = [r["task"] for r in results if r["status"] != "ok"]
    if failed:
        raise click.ClickException(
            f"{len(failed)} task(s) failed: {', '.join(failed)} (rerun to retry them)"
        )


_PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": []}


@main.command("heareval-embeddings", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def heareval_embeddings(arguments) -> None:
    """heareval's embeddings runner with the hear-eval-kit shims (same arguments)."""
    _heareval_runner("heareval.embeddings.runner", arguments)


@main.command("heareval-predictions", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def heareval_predictions(arguments) -> None:
    """heareval's predictions runner with the hear-eval-kit shims (same arguments)."""
    _heareval_runner("heareval.predictions.runner", arguments)


def _heareval_runner(module: str, arguments) -> None:
    """Run ``module`` as if started alone, logging included.

    heareval's task loggers and pytorch-lightning bring their own console
    handlers; with the project's handler on the root logger as well, each of
    their records would be printed twice.
    """
    from eval.compat import run_module

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs.TqdmHandler)]:
        root.removeHandler(handler)
    run_module(module, list(arguments))


@main.command("make-tasks")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option(
    "--sample-rates",
    default=",".join(map(str, DEFAULT_SAMPLE_RATES)),
    show_default=True,
    help="Comma-separated sample rates to write audio at.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def make_tasks_command(outdir, sample_rates, seed) -> None:
    """Write small synthetic tasks in HEAR layout (scene, k-fold multilabel, event)."""
    from eval.make_tasks import make_tasks

    rates = [int(rate) for rate in sample_rates.split(",") if rate.strip()]
    for folder in make_tasks(outdir, sample_rates=rates, seed=seed):
        click.echo(str(folder))


@main.command("prepare-tasks")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Tasks folder to write."
)
@click.option(
    "--rate",
    type=click.IntRange(min=1),
    default=SAMPLE_RATE,
    show_default=True,
    help="Output rate, Hz (default: CED's).",
)
@click.option(
    "--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes."
)
def prepare_tasks_command(sources, out, rate, jobs) -> None:
    """Resample HEAR task folders or .tar.gz archives (48 kHz) to RATE; rerun to resume."""
    from eval.prepare import prepare_tasks

    reports = prepare_tasks([Path(s) for s in sources], Path(out), rate, jobs)
    incomplete = [r.name for r in reports if not r.ok]
    if incomplete:
        raise click.ClickException(f"{len(incomplete)} incomplete: {', '.join(incomplete)}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--compare",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A second run folder to show next to the first.",
)
@click.option(
    "--audioset-map",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON written by `ced-distill evaluate` (AudioSet-style mAP).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write report.md/.csv/.png (default: RUN_DIR).",
)
@click.option(
    "--tasks-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Prepared HEAR task folders: their sizes complete the whole-benchmark estimate.",
)
def report(run_dir, compare, audioset_map, out, tasks_dir) -> None:
    """Markdown + CSV + bar chart of a run, next to the published CED scores."""
    from eval.report import write_report

    try:
        paths = write_report(run_dir, compare, audioset_map, out, tasks_dir)
    except KeyError as exc:  # a malformed run folder (other bad input is a ValueError)
        raise click.ClickException(str(exc)) from exc
    _show_report(paths)


def _show_report(paths: dict[str, Path]) -> None:
    click.echo(paths["markdown"].read_text())
    log.info("written: %s", ", ".join(str(p) for p in paths.values()))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Model name for the row.")
@click.option("--url", required=True, help="Link to the model's code or paper.")
@click.option("--date", default=None, help="Submission date YYYY-MM-DD (default: today).")
@click.option("--allow-partial", is_flag=True, help="Leave missing or failed tasks blank.")
@click.option("--no-header", is_flag=True, help="Print the row alone, without the column line.")
def leaderboard(run_dir, name, url, date, allow_partial, no_header) -> None:
    """One HEAR leaderboard CSV row (official column order, scores as fractions)."""
    from eval.leaderboard import leaderboard_row, method_note, render_row
    from eval.report import load_run

    row = leaderboard_row(run_dir, name, url, date, allow_partial)
    click.echo(render_row(row, header=not no_header), nl=False)
    note = method_note(load_run(run_dir))
    if note:
        log.warning(note)


@main.command()
@click.option(
    "--model",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="hear_ced checkpoint (any size), e.g. demo_out/student.safetensors.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--grid", type=click.Choice(GRIDS), default="fast", show_default=True)
@click.option("--grid-points", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks at once, in separate processes [default: one per core, at most 3].",
)
def demo(model, out, grid, grid_points, jobs) -> None:
    """Synthetic tasks: a hear_ced checkpoint against hearbaseline's naive model.

    The tasks are tiny: each heareval step's time is mostly its process
    start-up (imports, model loading), one core's work, so tasks run in
    parallel, one per core.
    """
    import os

    from eval.make_tasks import make_tasks
    from eval.report import write_report

    out_path = Path(out)
    tasks_dir = out_path / "tasks"
    folders = make_tasks(tasks_dir)
    jobs = jobs or max(1, min(len(folders), os.cpu_count() or 1))
    runs = {
        "hear_ced.custom": (out_path / "hear_ced", model),
        "hearbaseline": (out_path / "hearbaseline", None),
    }
    failed = []
    for module, (run_dir, weights) in runs.items():
        log.info("== %s", module)
        settings = RunSettings(module=module, model=weights, tasks_dir=tasks_dir, out=run_dir,
                               grid=grid, grid_points=grid_points, probe="both",
                               jobs=jobs)  # fmt: skip
        results = run_hear(settings)
        click.echo(summary_table(results))
        failed += [f"{module}/{r['task']}" for r in results if r["status"] != "ok"]
    _show_report(
        write_report(runs["hear_ced.custom"][0], runs["hearbaseline"][0], out_dir=out_path)
    )
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")
