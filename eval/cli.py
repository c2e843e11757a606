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

from hear_ced.common import logs
from hear_ced.common.cli import FriendlyGroup, extra_imports

with extra_imports(("eval",)):
    from hear_ced.eval.hear_run.schedule import run_hear, summary_table
    from hear_ced.eval.hear_run.settings import GRIDS, LOCKS, PROBES, RunSettings
    from hear_ced.eval.make_tasks import DEFAULT_SAMPLE_RATES
    from hear_ced.frontend import SAMPLE_RATE
    from hear_ced.hear import DEFAULT_PASSES

log = logging.getLogger(__name__)


@click.group(
    cls=FriendlyGroup,
    extras=("eval", "heareval", "xares"),
    command_extras={"maeb": ("maeb",)},
)
def main() -> None:
    """Evaluate audio embeddings on the HEAR 2021 tasks with hear-eval-kit."""


def _task_names(_context, _parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """``--tasks a,b --tasks c``: the task folder names, in order."""
    return tuple(name for entry in value for name in entry.split(",") if name)


def _json_object(_context, parameter, value: str) -> dict:
    """A JSON object option, e.g. ``--model-options '{"published": true}'``."""
    try:
        options = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})", param_hint=parameter.opts[0]) from exc
    if not isinstance(options, dict):
        raise click.BadParameter("must be a JSON object", param_hint=parameter.opts[0])
    return options


_ced_module_option = click.option(
    "--module",
    default="hear_ced.mini",
    show_default=True,
    help="hear_ced.<size> (or the bare size), or hear_ced.custom with --model.",
)


def _run_folder_options(tasks_help: str):
    """--tasks-dir, --tasks, --restart and --out: what each resumable benchmark run takes."""
    options = (
        click.option("--tasks-dir", required=True, type=click.Path(file_okay=False),
                     help=tasks_help),
        click.option("--tasks", multiple=True, callback=_task_names,
                     help="Only these task folders (repeat or comma-separate)."),
        click.option("--restart", is_flag=True,
                     help="Delete an earlier run in --out (its results) and start over."),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Output folder (resumable)."),
    )  # fmt: skip

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@main.command()
@click.option(
    "--module", required=True, help="HEAR module to evaluate, e.g. hear_ced.mini or hearbaseline."
)
@click.option(
    "--model", type=click.Path(dir_okay=False), default=None, help="Weights file for load_model()."
)
@_run_folder_options("Folder of HEAR task folders.")
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
    callback=_json_object,
    help="JSON object of keyword arguments for load_model(), e.g. '{\"published\": true}'.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks to run at once, each job in its own processes with its own GPU (round-robin "
    "over --devices or the visible GPUs) and an equal share of the CPU cores "
    "[default: the number of --devices, else 1].",
)
@click.option(
    "--devices",
    default=None,
    metavar="I,J,...",
    help="GPUs the jobs take in turn (indices of the visible ones); repeat one to share "
    "it, e.g. 0,0 [default: all visible].",
)
@click.option(
    "--lock",
    type=click.Choice(LOCKS),
    default="auto",
    show_default=True,
    help="Task locks: kernel locks (flock), lock files (file, for network file systems), "
    "or auto: flock on a local --out, else file.",
)
def hear(
    module, model, tasks_dir, tasks, grid, grid_points, probe, model_options, jobs, devices,
    lock, restart, out,
) -> None:  # fmt: skip
    """Embed, train and score every task in TASKS_DIR; rerun to resume.

    Several invocations (or --jobs) may share one --out folder, also from
    several machines: each takes the tasks nobody else works on.
    """
    gpus = _device_list(devices)
    jobs = jobs or len(gpus) or 1
    settings = RunSettings(
        module=module, model=model, tasks_dir=Path(tasks_dir), out=Path(out), tasks=tasks,
        grid=grid, grid_points=grid_points, probe=probe, model_options=model_options, jobs=jobs,
        devices=gpus, lock=lock, restart=restart,
    )  # fmt: skip
    results = run_hear(settings)
    click.echo(summary_table(results))
    _fail_on_failed_tasks(results)


@main.command()
@_ced_module_option
@click.option(
    "--model", type=click.Path(dir_okay=False), default=None, help="Checkpoint file (any size)."
)
@click.option(
    "--passes",
    type=click.IntRange(min=1),
    default=DEFAULT_PASSES,
    show_default=True,
    help="Shifted passes: frames every 160/PASSES ms.",
)
@_run_folder_options("Folder of X-ARES task folders (each with its audio tars).")
def xares(module, model, passes, tasks_dir, tasks, restart, out) -> None:
    """Run the X-ARES benchmark (its own code) on a hear_ced model; rerun to resume."""
    from hear_ced.eval.xares.report import write_report
    from hear_ced.eval.xares.run import XaresRunSettings, run_xares

    settings = XaresRunSettings(module=module, model=model, tasks_dir=Path(tasks_dir),
                                out=Path(out), tasks=tasks, passes=passes, restart=restart)  # fmt: skip
    results = run_xares(settings)
    _show_report(write_report(settings.out, results))
    _fail_on_failed_tasks(results)


@main.command()
@_ced_module_option
@click.option(
    "--model",
    type=click.Path(exists=True),
    default=None,
    help="Checkpoint file or exported Hugging Face folder (any size).",
)
@click.option(
    "--model-options",
    default="{}",
    show_default=True,
    callback=_json_object,
    help='JSON object of keyword arguments for load_model(), e.g. \'{"fast": "bf16"}\'.',
)
@click.option("--tasks", multiple=True, callback=_task_names,
              help="mteb task names (repeat or comma-separate) [default: the benchmark's].")  # fmt: skip
@click.option("--benchmark", default=None,
              help="mteb benchmark whose tasks run without --tasks [default: MAEB(v1, audio-only)].")  # fmt: skip
@click.option("--name", default=None,
              help="mteb model name, organisation/model [default: mispeech/ced-<size>, or "
              "hear-ced/<file name> for --model].")  # fmt: skip
@click.option("--revision", default=None,
              help="mteb model revision, e.g. the Hub commit [default: the weights' hash].")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Clips per encoding batch.")  # fmt: skip
@click.option("--download-only", is_flag=True,
              help="Only fetch each task's dataset into the Hugging Face cache (needs the network).")  # fmt: skip
@click.option("--restart", is_flag=True,
              help="Delete an earlier run in --out (its results) and start over.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (resumable); required unless --download-only.")  # fmt: skip
def maeb(module, model, model_options, tasks, benchmark, name, revision, batch_size,
         download_only, restart, out) -> None:  # fmt: skip
    """Run mteb's audio tasks (MAEB) on a hear_ced model's scene embeddings; rerun to resume.

    mteb's own result files, for a pull request to its results repository,
    are written under OUT/mteb/results.
    """
    from hear_ced.eval.maeb import MaebSettings, download, run_maeb, write_report

    if out is None and not download_only:
        raise click.BadParameter("is required unless --download-only", param_hint="--out")
    settings = MaebSettings(module=module, model=model, out=Path(out or "."), tasks=tasks,
                            benchmark=benchmark, model_options=model_options, name=name,
                            revision=revision, batch_size=batch_size, restart=restart)  # fmt: skip
    if download_only:
        _fail_on_failed_tasks(download(settings))
        return
    results = run_maeb(settings)
    _show_report(write_report(settings.out, results))
    _fail_on_failed_tasks(results)


def _fail_on_failed_tasks(results: list[dict]) -> None:
    failed = [r["task"] for r in results if r["status"] != "ok"]
    if failed:
        raise click.ClickException(
            f"{len(failed)} task(s) failed: {', '.join(failed)} (rerun to retry them)"
        )


def _device_list(text: str | None) -> tuple[int, ...]:
    """``--devices 0,1``: GPU indices (whether they exist is checked against the machine)."""
    if text is None:
        return ()
    entries = [entry.strip() for entry in text.split(",")]
    if not entries or not all(entry.isdigit() for entry in entries):
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of GPU indices such as 0,1",
            param_hint="--devices",
        )
    return tuple(int(entry) for entry in entries)


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
    from hear_ced.eval.compat import run_module

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
@click.option(
    "--clips-per-split",
    type=click.IntRange(min=1),
    help="Clips in every split of every task [default: each task's own, 6-12].",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Clip length of every task [default: each task's own, 1-3 s; events: at least 2].",
)
def make_tasks_command(outdir, sample_rates, seed, clips_per_split, seconds) -> None:
    """Write small synthetic tasks in HEAR layout (scene, k-fold multilabel, event)."""
    from hear_ced.eval.make_tasks import make_tasks

    rates = [int(rate) for rate in sample_rates.split(",") if rate.strip()]
    folders = make_tasks(
        outdir, sample_rates=rates, seed=seed, clips_per_split=clips_per_split, seconds=seconds
    )
    for folder in folders:
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
    from hear_ced.eval.prepare import prepare_tasks

    reports = prepare_tasks([Path(s) for s in sources], Path(out), rate, jobs)
    incomplete = [r.name for r in reports if not r.ok]
    if incomplete:
        raise click.ClickException(f"{len(incomplete)} incomplete: {', '.join(incomplete)}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--name",
    "names",
    multiple=True,
    help="Column group name of a run, in the order of the runs (default: module, weights, method).",
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
    help="Where to write report.md and report.csv (default: the first run's folder).",
)
@click.option(
    "--tasks-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Prepared HEAR task folders: their sizes complete the whole-benchmark estimate.",
)
def report(run_dirs, names, audioset_map, out, tasks_dir) -> None:
    """Markdown and CSV of one or more runs, each beside the published CED scores.

    Each RUN_DIR is one column group, beside the published CED score of its
    size; means that compare across runs are over the tasks they share.
    """
    from hear_ced.eval.report import write_report

    try:
        paths = write_report(run_dirs, names, audioset_map, out, tasks_dir)
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
    from hear_ced.eval.leaderboard import leaderboard_row, method_note, render_row
    from hear_ced.eval.report import load_run

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

    from hear_ced.eval.make_tasks import make_tasks
    from hear_ced.eval.report import write_report

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
    _show_report(write_report([run_dir for run_dir, _ in runs.values()], out_dir=out_path))
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
