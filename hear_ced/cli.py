"""``hear-ced``: tag audio files, convert checkpoints, export ONNX.

Torch loads only inside the commands and paths that run a torch model:
``tag --onnx`` and ``listen --onnx`` run on onnxruntime and never import it.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from hear_ced.common.cli import FriendlyGroup
from hear_ced.specs import PUBLISHED_SIZES
from hear_ced.tags import DEFAULT_BATCH_SIZE, DEFAULT_TOP

if TYPE_CHECKING:
    import torch

    from hear_ced.runtime import Tagger

log = logging.getLogger(__name__)


def options(*decorators):
    """One decorator applying ``decorators`` in the order they are listed in ``--help``."""

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def variant_option(default: str | None, help: str):
    """-m/--variant: a published model size."""
    return click.option(
        "-m",
        "--variant",
        type=click.Choice(PUBLISHED_SIZES),
        default=default,
        show_default=default is not None,
        help=help,
    )


# -m/--variant and --model of the commands that need a model.
model_choice = options(
    variant_option(
        "mini",
        "Published model size (weights from $HEAR_CED_WEIGHTS, the caches or a download "
        "from the Hugging Face Hub).",
    ),
    click.option(
        "--model",
        "model_file",
        type=click.Path(exists=True),
        help="Checkpoint file or Hugging Face folder instead of the published weights.",
    ),
)

_seconds = click.FloatRange(min=0, min_open=True)
# --window and --hop of the commands that tag over time.
window_options = options(
    click.option(
        "--window", default=2.0, show_default=True, type=_seconds, help="Window length in seconds."
    ),
    click.option(
        "--hop", default=1.0, show_default=True, type=_seconds, help="Seconds between windows."
    ),
)

# --exact, --onnx and --labels: how the tagging commands run and name their classes.
tagger_options = options(
    click.option(
        "--exact",
        is_flag=True,
        help="Run in float32 as published, instead of the fastest path within 0.01 of it.",
    ),
    click.option(
        "--onnx",
        type=click.Path(exists=True, dir_okay=False),
        help="Tag with this graph from 'hear-ced export-onnx' on onnxruntime (torch not needed).",
    ),
    click.option(
        "--labels",
        "labels_file",
        type=click.Path(exists=True, dir_okay=False),
        help="Class names, one per line or a CSV with a display_name column "
        "(class_labels_indices.csv); instead of the model's own.",
    ),
)


def output_labels(model: Tagger, labels_file: str | None, onnx: str | None) -> list[str]:
    """The names to print: --labels, else the model's; a graph without names is refused.

    A torch model without names tags under numbered names with a warning; an
    exported graph is meant to carry its names, so one without them (and no
    --labels) is an error saying what to pass.
    """
    from hear_ced.labels import class_names, read_label_file

    if labels_file is not None:
        try:
            return read_label_file(labels_file, model.num_classes).names
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--labels") from exc
    if onnx is not None and model.labels is None:
        raise click.UsageError(
            f"{onnx} carries no class names (exported from a model without them): pass "
            "--labels FILE, or export the graph again from a model file that has them"
        )
    return class_names(model.labels, model.num_classes)


def one_model(model_file: str | None) -> None:
    """Refuse -m/--variant given together with --model: only one of them can be used."""
    ctx = click.get_current_context()
    if model_file and ctx.get_parameter_source("variant") is ParameterSource.COMMANDLINE:
        raise click.UsageError(
            "-m/--variant picks a published model and --model a file; give only one of them"
        )


def tagger(
    onnx: str | None,
    variant: str,
    model_file: str | None,
    exact: bool,
    device: torch.device | None = None,
) -> Tagger:
    """The exported graph ``onnx`` on onnxruntime, else the torch model as a ``Tagger``.

    The torch model runs on ``device`` in float32, or on the CPU, unless
    ``exact``, with ``fast="auto"`` (within 0.01 of float32): the fast paths
    are CPU paths.
    """
    if onnx is not None:
        ctx = click.get_current_context()
        torch_only = {
            "--model": model_file is not None,
            "-m/--variant": ctx.get_parameter_source("variant") is ParameterSource.COMMANDLINE,
            "--exact": exact,
            "--device": device is not None,
        }
        given = [name for name, used in torch_only.items() if used]
        if given:
            raise click.UsageError(
                f"--onnx tags with an exported graph; {' and '.join(given)} choose a torch "
                "model: give only one of them"
            )
        from hear_ced.runtime import OnnxTagger

        return OnnxTagger(onnx)
    one_model(model_file)
    try:
        from hear_ced.tagging import ModelTagger, fix_mmap_threshold, load_tagger
    except ImportError as exc:
        if exc.name != "torch":
            raise
        raise click.ClickException(
            "torch is not installed: pip install 'hear-ced[torch]' to tag with -m/--model, "
            "or tag with an exported graph: --onnx MODEL.onnx"
        ) from exc
    model = load_tagger(variant, model_file)
    if device is not None and device.type != "cpu":
        model = model.to(device)
    elif not exact:
        from hear_ced.fast import optimize_for_inference

        model = optimize_for_inference(model, "auto")
    fix_mmap_threshold()  # process-wide, so the command sets it, not the library
    return ModelTagger(model)


def _device(_ctx: click.Context, _param: click.Parameter, value: str) -> torch.device | None:
    """The torch device, or None for the CPU (torch is then not imported)."""
    if value == "cpu":
        return None
    from hear_ced.device import torch_device

    try:
        return torch_device(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def failure_summary(total: int, failed: list[str], shown: int = 10) -> str:
    """One line: how many files were tagged and which were not."""
    names = ", ".join(failed[:shown])
    if len(failed) > shown:
        names += f" and {len(failed) - shown} more"
    files = "file" if total == 1 else "files"
    return f"tagged {total - len(failed)} of {total} {files}; {len(failed)} failed: {names}"


@click.group(
    cls=FriendlyGroup,
    extras=("torch", "plot"),
    command_extras={"export-onnx": ("onnx",)},
)
def main() -> None:
    """CED audio tagging models (tiny, mini, small, base)."""


@main.command()
@click.argument(
    "inputs", metavar="FILE_OR_FOLDER...", nargs=-1, required=True, type=click.Path(exists=True)
)
@model_choice
@click.option(
    "--top",
    type=click.IntRange(min=1),
    help=f"Report at most this many classes per file (or window); default {DEFAULT_TOP}, "
    "with --threshold no limit.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    metavar="P",
    help="Report only the classes whose probability is at least P (with --top: at most "
    "--top of them, the most probable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="Print CSV: a header, then a row per tag (file,rank,index,label,probability; "
    "with --timeline also start and end after file).",
)
@click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(min=1),
    help="Clips (or timeline windows) per model call; the results do not depend on it "
    "(beyond float rounding).",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    callback=_device,
    help="Torch device to run on: cpu, cuda, cuda:N or mps (float32 off the CPU).",
)
@click.option("--timeline", is_flag=True, help="Tag every window instead of the whole file.")
@window_options
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="With --timeline: draw the top classes over time into this PNG.",
)
@tagger_options
def tag(
    inputs: tuple[str, ...],
    variant: str,
    model_file: str | None,
    top: int | None,
    threshold: float | None,
    as_json: bool,
    as_csv: bool,
    batch_size: int,
    device: torch.device | None,
    timeline: bool,
    window: float,
    hop: float,
    plot: str | None,
    exact: bool,
    onnx: str | None,
    labels_file: str | None,
) -> None:
    """Print the classes of each audio FILE, and of the audio files in each FOLDER.

    Folders are searched recursively for the extensions soundfile reads, in
    sorted order; any sample rate and channel count. A file that cannot be
    read is reported and the others are tagged; the exit status is then 1,
    after a summary line. Files longer than 10.11 s are tagged in chunks
    whose probabilities are averaged, weighted by their length, and are read
    block by block, so memory does not grow with their length. With
    --timeline, every window of --window seconds, every --hop seconds, gets
    its own classes. With --onnx, an exported graph tags on onnxruntime,
    chunked and averaged the same way, without torch.
    """
    from hear_ced.audio import audio_files
    from hear_ced.runtime import tag_files
    from hear_ced.tags import csv_header, render_tags, render_timeline, select_tags
    from hear_ced.timeline import file_timelines, plot_timelines

    if plot and not timeline:
        raise click.UsageError("--plot draws the timeline; add --timeline")
    if as_json and as_csv:
        raise click.UsageError("--json and --csv are two output formats; give only one")
    fmt = "json" if as_json else "csv" if as_csv else "text"
    paths = audio_files(inputs)
    if not paths:
        raise click.ClickException(f"no audio files to tag in {', '.join(inputs)}")
    if top is None and threshold is None:
        top = DEFAULT_TOP
    model = tagger(onnx, variant, model_file, exact, device)
    labels = output_labels(model, labels_file, onnx)
    if fmt == "csv":
        click.echo(csv_header(timeline), nl=False)
    if timeline:
        outcomes = file_timelines(model, paths, window, hop, batch_size)
    else:
        outcomes = tag_files(model, paths, batch_size)
    failed, drawn = [], []
    for outcome in outcomes:
        if outcome.error is not None:
            click.ClickException(outcome.error).show()
            failed.append(outcome.path)
        elif timeline:
            windows = outcome.result.windows(labels, top, threshold)
            click.echo(render_timeline(outcome.path, windows, fmt), nl=False)
            drawn.append((outcome.path, outcome.result))
        else:
            tags = select_tags(outcome.result, labels, top, threshold)
            click.echo(render_tags(outcome.path, tags, fmt), nl=False)
    if plot and drawn:
        plot_timelines(drawn, labels, plot, top or DEFAULT_TOP)
        log.info("wrote %s", plot)
    if failed:
        raise click.ClickException(failure_summary(len(paths), failed))


@main.command()
@click.option(
    "--rate",
    default=16000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sample rate of the incoming PCM (resampled to 16 kHz with soxr).",
)
@model_choice
@click.option(
    "--top",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many classes to print per window.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per window.")
@window_options
@tagger_options
def listen(
    rate: int,
    variant: str,
    model_file: str | None,
    top: int,
    as_json: bool,
    window: float,
    hop: float,
    exact: bool,
    onnx: str | None,
    labels_file: str | None,
) -> None:
    """Tag a live stream of raw 16-bit little-endian mono PCM from standard input.

    Prints one line per --hop seconds, for the last --window seconds, as soon
    as they have arrived; memory holds one window. For example:

    \b
        arecord -q -f S16_LE -c 1 -r 16000 -t raw | hear-ced listen
    """
    from hear_ced.tags import select_tags, window_line, window_record
    from hear_ced.timeline import tag_stream

    model = tagger(onnx, variant, model_file, exact)
    labels = output_labels(model, labels_file, onnx)
    try:
        for start, end, probs in tag_stream(model, sys.stdin.buffer, rate, window, hop):
            tags = select_tags(probs, labels, top)
            record = window_record(start, end, tags)
            click.echo(json.dumps(record) if as_json else window_line(start, end, tags))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.argument("target", type=click.Path())
@variant_option(None, "Refuse the source unless it is this size.")
@click.option(
    "--to",
    "layout",
    type=click.Choice(["native", "hf"]),
    default="native",
    show_default=True,
    help="native: one .safetensors file; hf: a Hugging Face model folder (mispeech/ced-* layout).",
)
@click.option("--force", is_flag=True, help="With --to hf: write into a folder that holds files.")
def convert(source: str, target: str, variant: str | None, layout: str, force: bool) -> None:
    """Convert a checkpoint (original .pt, Hugging Face folder or native) to TARGET.

    With --to hf, TARGET is a folder holding model.safetensors, config.json
    (with the model's class names) and preprocessor_config.json, ready for
    upload to the Hugging Face Hub.
    """
    from hear_ced.checkpoints import describe, load_model_file, save_huggingface, save_model
    from hear_ced.labels import known_class_names

    model = load_model_file(source, variant=variant)
    if layout == "hf":
        save_huggingface(model, target, force=force)
    else:
        save_model(
            model, target, labels=known_class_names(model.config.labels, model.config.num_classes)
        )
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
@click.option(
    "--int8",
    is_flag=True,
    help="Quantise the linear layers to int8 (dynamic, per-channel weights), keeping in float32 "
    "the fewest that bring it within 0.01 of float32 on probe clips (stored in its metadata).",
)
@click.option(
    "--allow-inaccurate",
    is_flag=True,
    help="With --int8: keep a graph further than 0.01 from float32 instead of refusing it.",
)
@click.option("--opset", default=17, show_default=True, help="ONNX opset version.")
@click.option(
    "--optimize",
    is_flag=True,
    help="Write the graph as onnxruntime optimises it (sessions open faster; needs onnxruntime).",
)
def export_onnx(
    target: str,
    variant: str,
    model_file: str | None,
    output: str,
    int8: bool,
    allow_inaccurate: bool,
    opset: int,
    optimize: bool,
) -> None:
    """Export waveform -> OUTPUT as an ONNX graph with the frontend inside (clips up to 10.11 s)."""
    import importlib

    from hear_ced.export import export_onnx
    from hear_ced.tagging import load_tagger

    # torch's exporter needs onnx; importing it first names the extra when it is missing.
    importlib.import_module("onnx")
    one_model(model_file)
    model = load_tagger(variant, model_file)
    path = export_onnx(
        model, target, output, int8, opset, optimize, allow_inaccurate=allow_inaccurate
    )
    click.echo(f"wrote {path}")
