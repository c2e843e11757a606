"""``make bench``: measure everything, write results.json and BENCHMARKS.md.

Sections run in order and results.json is rewritten (atomically) after each,
so an interrupted run keeps what it finished; ``--only`` reruns some sections
and merges them into the existing results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import click

from bench import coldstart, efficientat, embeddings, inference, pipeline
from bench.common import machine_description
from bench.report import output_options, read_results, record
from hear_ced.common import logs
from hear_ced.model import PUBLISHED_SIZES

# The module's own name also under ``python -m`` (where ``__name__`` is "__main__"),
# so its records follow the "bench" logger that ``logs.configure`` sets up.
log = logging.getLogger(__spec__.name if __spec__ else __name__)


def sections(
    quick: bool,
    models: tuple[str, ...] = PUBLISHED_SIZES,
    mn10_src: efficientat.Checkout | None = None,
) -> dict[str, Callable[[], object]]:
    """Section name -> measurement; ``quick`` shrinks every section for a smoke run.

    ``models`` limits the inference grid to some CED sizes; ``mn10_src`` is the
    EfficientAT checkout whose MN10 the inference sections compare with (none:
    CED's paths alone).
    """
    if quick:
        timing = dict(budget_s=0.2, variants=("tiny",), headline_budget_s=0.5, headline_rounds=5)
        timing.update(attempts=2, compile=False)
    else:
        timing = dict(budget_s=1.5, variants=models)
    return {
        "inference": lambda: inference.run(**timing, mn10_src=mn10_src),
        "cold_start": lambda: coldstart.run(runs=2 if quick else 7),
        "embeddings": lambda: (
            embeddings.run(n_clips=1, budget_s=0.5) if quick else embeddings.run()
        ),
        "pipeline": lambda: pipeline.run(batch=4, teachers=("tiny",)) if quick else pipeline.run(),
    }


def _checkout(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> efficientat.Checkout | None:
    """``--mn10-src`` checked before anything is measured: one line naming what is wrong."""
    if value is None:
        return None
    try:
        return efficientat.find_checkout(value)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@output_options
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(list(sections(quick=True))),
    help="Run only these sections (repeatable); others are kept from an earlier results.json.",
)
@click.option(
    "--quick", is_flag=True, help="A fast smoke run with small sizes (not for reporting)."
)
@click.option(
    "--models",
    default=",".join(PUBLISHED_SIZES),
    show_default=True,
    help="CED sizes of the inference grid, comma-separated.",
)
@click.option(
    "--mn10-src",
    type=click.Path(),
    callback=_checkout,
    help="An EfficientAT checkout (git clone https://github.com/fschmid56/EfficientAT): time "
    "CED against its own MN10 and frontend (random weights); without it, CED alone.",
)
def main(
    out_dir: str,
    report: str,
    only: tuple[str, ...],
    quick: bool,
    models: str,
    mn10_src: efficientat.Checkout | None,
) -> None:
    """Measure CED inference, HEAR embedding and distillation performance."""
    logs.configure()
    results_path, previous = read_results(out_dir)
    # ``make bench-gpu`` figures are measured elsewhere (bench.gpu) and kept.
    kept = {"gpu_bench": previous["gpu_bench"]} if "gpu_bench" in previous else {}
    if "gpu_bench" in previous.get("measured_at", {}):
        kept["measured_at"] = {"gpu_bench": previous["measured_at"]["gpu_bench"]}
    results = previous if only else kept
    results["machine"] = machine_description()
    durations = results.setdefault("durations_s", {})
    for name, measure in sections(quick, tuple(models.split(",")), mn10_src).items():
        if only and name not in only:
            continue
        log.info("== %s", name)
        start = time.perf_counter()
        results[name] = measure()
        durations[name] = time.perf_counter() - start
        record(results, name, results_path, Path(report))
    click.echo(f"wrote {results_path} and {report}")


if __name__ == "__main__":
    main()
