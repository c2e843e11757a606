"""``make bench``: measure everything, write results.json and BENCHMARKS.md.

Sections run in order and results.json and the report are rewritten
(atomically) after each, so an interrupted run keeps what it finished;
sections not measured in a run (``--only``, or the GPU section that
``make bench-gpu`` measures) keep their earlier figures. The inference section's
headline also goes into ``bench/headlines.json`` under the run's CPU class,
which keeps the last headline of every class measured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import click

from bench import coldstart, efficientat, embeddings, inference, pipeline
from bench.common import machine_description
from bench.inference import headline
from bench.report import render
from hear_ced.common import logs
from hear_ced.common.files import read_json, write_json, write_text
from hear_ced.model import PUBLISHED_SIZES

# The module's own name also under ``python -m`` (where ``__name__`` is "__main__"),
# so its records follow the "bench" logger that ``logs.configure`` sets up.
log = logging.getLogger(__spec__.name if __spec__ else __name__)


def sections(
    quick: bool,
    models: tuple[str, ...] = PUBLISHED_SIZES,
    mn10_src: Path | None = None,
) -> dict[str, Callable[[], object]]:
    """Section name -> measurement; ``quick`` shrinks every section for a smoke run.

    The first, ``machine``, describes where they run (``make bench-gpu`` names its own device).

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
        "machine": machine_description,
        "inference": lambda: inference.run(**timing, mn10_src=mn10_src),
        "cold_start": lambda: coldstart.run(runs=2 if quick else 7),
        "embeddings": lambda: embeddings.run(seconds=20.0) if quick else embeddings.run(),
        "pipeline": lambda: pipeline.run(batch=4, teachers=("tiny",)) if quick else pipeline.run(),
    }


HEADLINES = Path(__file__).with_name("headlines.json")


def measure(
    out_dir: str,
    report: str,
    sections: dict[str, Callable[[], object]],
    headlines: Path | None = HEADLINES,
) -> None:
    """Measure ``sections`` in order into ``out_dir``/results.json and ``report``.

    Each section's finish time and duration are recorded with it. A measured
    inference section's headline replaces its CPU class's in ``headlines``
    (None: a smoke run, which records none).
    """
    path = Path(out_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = read_json(path) if path.exists() else {}
    source = headlines or HEADLINES
    classes = read_json(source) if source.exists() else {}
    for name, fn in sections.items():
        log.info("== %s", name)
        start = time.perf_counter()
        results[name] = fn()
        results.setdefault("measured", {})[name] = {
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": time.perf_counter() - start,
        }
        if name == "inference" and headlines is not None:
            classes[results["machine"]["cpu_class"]] = headline(results[name], results["machine"])
            write_json(headlines, classes, indent=1)
        write_json(path, results, indent=1)
        write_text(Path(report), render(results, classes))
    click.echo(f"wrote {path} and {report}")


def output_options(command: Callable) -> Callable:
    """``--out`` and ``--report`` of the bench commands: where their figures are kept."""
    command = click.option(
        "--report",
        default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"),
        show_default=True,
        type=click.Path(),
        help="Markdown report to rewrite.",
    )(command)
    return click.option(
        "--out", "out_dir", default="bench/out", show_default=True, type=click.Path()
    )(command)


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
    callback=lambda _ctx, _param, value: value and efficientat.find_checkout(value),
    help="An EfficientAT checkout (git clone https://github.com/fschmid56/EfficientAT): time "
    "CED against its own MN10 and frontend (random weights); without it, CED alone.",
)
def main(
    out_dir: str,
    report: str,
    only: tuple[str, ...],
    quick: bool,
    models: str,
    mn10_src: Path | None,
) -> None:
    """Measure CED inference, HEAR embedding and distillation performance."""
    logs.configure()
    chosen = sections(quick, tuple(models.split(",")), mn10_src)
    keep = ("machine", *only) if only else chosen
    measure(
        out_dir,
        report,
        {k: v for k, v in chosen.items() if k in keep},
        None if quick else HEADLINES,
    )


if __name__ == "__main__":
    main()
