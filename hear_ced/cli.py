"""``hear-ced``: tag audio files, convert checkpoints, export ONNX."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING

import click

from ced_common.cli import FriendlyGroup, verbosity_options
from hear_ced.model import PUBLISHED_SIZES

if TYPE_CHECKING:
    from hear_ced.model import CED

log = logging.getLogger(__name__)


def model_choice(command):
    """The -m/--variant and --model options shared by commands that need a model."""
    command = click.option(
        "--model",
        "model_file",
        type=click.Path(exists=True),
        help="Checkpoint file or Hugging Face folder instead of the published weights.",
    )(command)
    return click.option(
        "-m",
        "--variant",
        type=click.Choice(PUBLISHED_SIZES),
        default="mini",
        show_default=True,
        help="Published model size (weights from $HEAR_CED_WEIGHTS, the caches or a download "
        "from the Hugging Face Hub, else Zenodo).",
    )(command)


def window_options(command):
    """--window and --hop of the commands that tag over time."""
    seconds = click.FloatRange(min=0, min_open=True)
    command = click.option(
        "--hop", default=1.0, show_default=True, type=seconds, help="Seconds between windows."
    )(command)
    return click.option(
        "--window", default=2.0, show_default=True, type=seconds, help="Window length in seconds."
    )(command)


def timeline_options(command):
    """--timeline, its windows and its plot (``tag``)."""
    command = click.option(
        "--plot",
        type=click.Path(dir_okay=False),
        help="With --timeline: draw the top classes over time into this PNG.",
    )(command)
    command = window_options(command)
    return click.option(
        "--timeline", is_flag=True, help="Tag every window instead of the whole file."
    )(command)


def exact_option(command):
    """--exact of the tagging commands (float32 instead of the fastest accurate path)."""
    return click.option(
        "--exact",
        is_flag=True,
        help="Run in float32 as published, instead of the fastest path within 0.01 of it.",
    )(command)


def tagging_model(variant: str, model_file: str | None, exact: bool) -> CED:
    """The tagger: exact float32, or ``fast="auto"`` (checked within 0.01 of float32)."""
    from hear_ced.tagging import load_tagger

    model = load_tagger(variant, model_file)
    if exact:
        return model
    from hear_ced.fast import optimize_for_inference

    return optimize_for_inference(model, "auto")


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@verbosity_options
def main() -> None:
    """CED audio tagging models (tiny, mini, small, base)."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@model_choice
@click.option(
    "--top",
    default=5,
    show_default=True,
    type=click.IntRange(1, 527),
    help="How many labels to print per file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@timeline_options
@exact_option
def tag(
    files: tuple[str, ...],
    variant: str,
    model_file: str | None,
    top: int,
    as_json: bool,
    timeline: bool,
    window: float,
    hop: float,
    plot: str | None,
    exact: bool,
) -> None:
    """Print the top AudioSet labels of each audio FILE (wav, flac, ...; any rate).

    Files longer than 10.11 s are tagged in chunks whose probabilities are
    averaged, weighted by their length. With --timeline, every window of
    --window seconds, every --hop seconds, gets its own labels.
    """
    from hear_ced.tagging import tag_file

    if plot and not timeline:
        raise click.UsageError("--plot draws the timeline; add --timeline")
    model = tagging_model(variant, model_file, exact)
    if timeline:
        print_timelines(model, files, top, as_json, window, hop, plot)
        return
    for path in files:
        tags = tag_file(model, path, top)  # an unreadable file: FriendlyGroup's Error line
        if as_json:
            click.echo(json.dumps({"file": path, "tags": [t.__dict__ for t in tags]}))
            continue
        click.echo(path)
        for t in tags:
            click.echo(f"  {t.probability:6.3f}  {t.label}")


def print_timelines(
    model: CED,
    files: tuple[str, ...],
    top: int,
    as_json: bool,
    window: float,
    hop: float,
    plot: str | None,
) -> None:
    """``tag --timeline``: labels per window of each file, optionally a plot of them."""
    from hear_ced.audio import load_audio
    from hear_ced.tagging import model_labels
    from hear_ced.timeline import plot_timelines, timeline, window_line, window_record

    labels = model_labels(model)
    timelines = []
    for path in files:
        line = timeline(model, load_audio(path), window, hop)
        timelines.append((path, line))
        rows = zip(line.starts, line.ends, line.window_tags(labels, top), strict=True)
        if as_json:
            windows = [window_record(float(s), float(e), tags) for s, e, tags in rows]
            click.echo(json.dumps({"file": path, "windows": windows}))
            continue
        click.echo(path)
        for start, end, tags in rows:
            click.echo(window_line(float(start), float(end), tags))
    if plot:
        plot_timelines(timelines, labels, plot, top)
        log.info("wrote %s", plot)


@main.command()
@click.option(
    "--rate",
    default=16000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sample rate of the incoming PCM (resampled to 16 kHz with soxr).",
)
@model_choice
@click.option("--top", default=3, show_default=True, type=click.IntRange(1, 527))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per window.")
@window_options
@exact_option
def listen(
    rate: int,
    variant: str,
    model_file: str | None,
    top: int,
    as_json: bool,
    window: float,
    hop: float,
    exact: bool,
) -> None:
    """Tag a live stream of raw 16-bit little-endian mono PCM from standard input.

    Prints one line per --hop seconds, for the last --window seconds, as soon
    as they have arrived; memory holds one window. For example:

    \b
        arecord -q -f S16_LE -c 1 -r 16000 -t raw | hear-ced listen
    """
    from hear_ced.tagging import model_labels, top_tags
    from hear_ced.timeline import tag_stream, window_line, window_record

    model = tagging_model(variant, model_file, exact)
    labels = model_labels(model)
    try:
        for start, end, probs in tag_stream(model, sys.stdin.buffer, rate, window, hop):
            tags = top_tags(probs, labels, top)
            record = window_record(start, end, tags)
            click.echo(json.dumps(record) if as_json else window_line(start, end, tags))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.argument("target", type=click.Path(dir_okay=False))
@click.option(
    "-m",
    "--variant",
    type=click.Choice(PUBLISHED_SIZES),
    default=None,
    help="Refuse the source unless it is this size.",
)
def convert(source: str, target: str, variant: str | None) -> None:
    """Convert an original CED .pt or Hugging Face checkpoint to a .safetensors file."""
    from hear_ced.checkpoints import describe, load_model_file, save_model
    from hear_ced.labels import audioset_labels

    model = load_model_file(source, variant=variant)
    labels = model.labels or (audioset_labels() if model.config.num_classes == 527 else None)
    save_model(model, target, labels=labels)
    click.echo(f"wrote {describe(model.config)} to {target}")


@main.command("export-onnx")
@click.argument("target", type=click.Path(dir_okay=False))
@model_choice
@click.option(
    "--output",
    type=click.Choice(["probabilities", "embeddings"]),
    default="probabilities",
    show_default=True,
    help="Graph output: class probabilities or the scene embedding.",
)
@click.option("--int8", is_flag=True, help="Quantise the transformer's linear layers to int8.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset version.")
def export_onnx(
    target: str, variant: str, model_file: str | None, output: str, int8: bool, opset: int
) -> None:
    """Export waveform -> OUTPUT as an ONNX graph with the frontend inside (clips up to 10.11 s)."""
    from hear_ced.export import export_checkpoint

    path = export_checkpoint(model_file or variant, target, output=output, int8=int8, opset=opset)
    click.echo(f"wrote {path}")
