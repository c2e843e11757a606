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
from hear_ced.events import EventRule
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


def refuse_torch_options(
    model_file: str | None, device: torch.device | None, others: dict[str, bool], verb: str
) -> None:
    """With --onnx (that ``verb``s): refuse the options that choose or run a torch model
    (``others``: more of them)."""
    ctx = click.get_current_context()
    torch_only = {
        "--model": model_file is not None,
        "-m/--variant": ctx.get_parameter_source("variant") is ParameterSource.COMMANDLINE,
        **others,
        "--device": device is not None,
    }
    given = [name for name, used in torch_only.items() if used]
    if given:
        raise click.UsageError(
            f"--onnx {verb} with an exported graph; {' and '.join(given)} choose a torch "
            "model or its method: give only one of them"
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
        refuse_torch_options(model_file, device, {"--exact": exact}, "tags")
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


device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    callback=_device,
    help="Torch device to run on: cpu, cuda, cuda:N or mps (float32 off the CPU).",
)


def batch_size_option(what: str):
    return click.option(
        "--batch-size",
        default=DEFAULT_BATCH_SIZE,
        show_default=True,
        type=click.IntRange(min=1),
        help=f"{what} per model call; the results do not depend on it (beyond float rounding).",
    )


# --top, --threshold, --json and --csv: which tags the tagging commands print, and how.
tag_output_options = options(
    click.option(
        "--top",
        type=click.IntRange(min=1),
        help=f"Report at most this many classes per file (or window); default {DEFAULT_TOP}, "
        "with --threshold no limit.",
    ),
    click.option(
        "--threshold",
        type=click.FloatRange(0, 1),
        metavar="P",
        help="Report only the classes whose probability is at least P (with --top: at most "
        "--top of them, the most probable).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file."),
    click.option(
        "--csv",
        "as_csv",
        is_flag=True,
        help="Print CSV: a header, then a row per tag (file,rank,index,label,probability; "
        "with --timeline or listen also start and end after file).",
    ),
)


def output_format(as_json: bool, as_csv: bool) -> str:
    if as_json and as_csv:
        raise click.UsageError("--json and --csv are two output formats; give only one")
    return "json" if as_json else "csv" if as_csv else "text"


def tag_count(top: int | None, threshold: float | None) -> int | None:
    """--top as given; DEFAULT_TOP when neither --top nor --threshold limits the tags."""
    return DEFAULT_TOP if top is None and threshold is None else top


def failure_summary(total: int, failed: list[str], shown: int = 10, done: str = "tagged") -> str:
    """One line: how many files were tagged (or ``done``) and which were not."""
    names = ", ".join(failed[:shown])
    if len(failed) > shown:
        names += f" and {len(failed) - shown} more"
    files = "file" if total == 1 else "files"
    return f"{done} {total - len(failed)} of {total} {files}; {len(failed)} failed: {names}"


def report_failures(total: int, failed: list[str], done: str = "tagged") -> None:
    if failed:
        raise click.ClickException(failure_summary(total, failed, done=done))


@click.group(
    cls=FriendlyGroup,
    extras=("torch", "plot"),
    command_extras={"export-onnx": ("onnx",)},
)
def main() -> None:
    """CED audio tagging models (tiny, mini, small, base)."""


def _event_rule(ctx: click.Context, _param: click.Parameter, value: bool) -> EventRule | None:
    """--events: the EventRule of the event options, checked before any model loads."""
    if not value:
        return None
    names = ("onset_threshold", "offset_threshold", "median", "min_duration", "merge_gap")
    values = {name: ctx.params[name] for name in names}
    if ctx.get_parameter_source("offset_threshold") is ParameterSource.DEFAULT:
        values["offset_threshold"] = min(values["offset_threshold"], values["onset_threshold"])
    try:
        return EventRule(**values)
    except ValueError as exc:
        raise click.ClickException(f"--events: {exc}") from exc  # one line, before the model loads


def event_setting(name: str, metavar: str, help: str, attribute: str | None = None, **kwargs):
    """An option of --events, defaulting to EventRule's (whose type it takes); eager, so
    that its value is in ctx.params when --events (not eager) builds and checks the rule."""
    default = getattr(EventRule, attribute or name[2:].replace("-", "_"))
    kwargs.setdefault("show_default", True)
    declarations = [name, attribute] if attribute else [name]
    return click.option(
        *declarations, default=default, is_eager=True, metavar=metavar, help=help, **kwargs
    )


event_options = options(
    click.option(
        "--events",
        "event_rule",
        is_flag=True,
        callback=_event_rule,
        help="Print sound events (onset, offset, class) from the timeline instead of tags: "
        "DCASE TSV (filename, onset, offset, event_label), or with --json one object per file.",
    ),
    event_setting(
        "--onset-threshold", "P", "With --events: an event starts where a class reaches P ..."
    ),
    event_setting(
        "--offset-threshold",
        "P",
        "... and lasts while it stays at or above P; 0 < P <= --onset-threshold <= 1 "
        f"(default {EventRule.offset_threshold}, or --onset-threshold when lower).",
        show_default=False,
    ),
    event_setting(
        "--median-filter",
        "N",
        "With --events: median of each class's probability over N windows (odd) first.",
        attribute="median",
    ),
    event_setting("--min-duration", "S", "With --events: drop events shorter than S seconds."),
    event_setting(
        "--merge-gap", "S", "With --events: join events of a class at most S seconds apart."
    ),
)


def plot_needs_matplotlib(plot: str | None) -> None:
    """With --plot, import matplotlib now: a missing extra is named before the job, not after."""
    if plot:
        import importlib

        importlib.import_module("matplotlib")


@main.command()
@click.argument(
    "inputs", metavar="FILE_OR_FOLDER...", nargs=-1, required=True, type=click.Path(exists=True)
)
@model_choice
@tag_output_options
@batch_size_option("Clips (or timeline windows)")
@device_option
@click.option("--timeline", is_flag=True, help="Tag every window instead of the whole file.")
@window_options
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="With --timeline: draw the top classes over time into this PNG.",
)
@event_options
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
    event_rule: EventRule | None,
    onset_threshold: float,
    offset_threshold: float,
    median: int,
    min_duration: float,
    merge_gap: float,
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
    block by block, so memory does not grow with their length (with a
    progress bar on standard error). With --timeline, every window of
    --window seconds, every --hop seconds, gets its own classes. With
    --events, the timeline's windows become sound events per class: median
    filter, hysteresis between the onset and offset thresholds, gap merging,
    minimum duration. With --onnx, an exported graph tags on onnxruntime,
    chunked and averaged the same way, without torch.
    """
    from hear_ced.audio import audio_files
    from hear_ced.events import detect_events, events_tsv_header, render_events
    from hear_ced.runtime import tag_files
    from hear_ced.tags import csv_header, render_tags, render_timeline, select_tags
    from hear_ced.timeline import check_window, file_timelines, plot_timelines

    timeline = timeline or event_rule is not None
    if plot and not timeline:
        raise click.UsageError("--plot draws the timeline; add --timeline")
    fmt = output_format(as_json, as_csv)
    if event_rule is not None and fmt == "csv":
        raise click.UsageError("--events prints TSV, or JSON with --json; --csv prints tags")
    plot_needs_matplotlib(plot)
    paths = audio_files(inputs, required=True)
    top = tag_count(top, threshold)
    model = tagger(onnx, variant, model_file, exact, device)
    labels = output_labels(model, labels_file, onnx)
    if timeline:
        check_window(model, window)
    if event_rule is not None and fmt == "text":
        click.echo(events_tsv_header(), nl=False)
    elif fmt == "csv":
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
        elif event_rule is not None:
            events = detect_events(outcome.result, labels, event_rule)
            click.echo(render_events(outcome.path, events, fmt == "json"), nl=False)
            drawn.append((outcome.path, outcome.result))
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
    report_failures(len(paths), failed)


@main.command()
@click.option(
    "--rate",
    default=16000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sample rate of the incoming PCM (resampled to 16 kHz with soxr).",
)
@model_choice
@tag_output_options
@device_option
@window_options
@tagger_options
def listen(
    rate: int,
    variant: str,
    model_file: str | None,
    top: int | None,
    threshold: float | None,
    as_json: bool,
    as_csv: bool,
    device: torch.device | None,
    window: float,
    hop: float,
    exact: bool,
    onnx: str | None,
    labels_file: str | None,
) -> None:
    """Tag a live stream of raw 16-bit little-endian mono PCM from standard input.

    Prints one line per --hop seconds, for the last --window seconds, as soon
    as they have arrived; memory holds one window. --json prints one object
    per window, --csv the rows of tag --timeline --csv with file "-". For
    example:

    \b
        arecord -q -f S16_LE -c 1 -r 16000 -t raw | hear-ced listen
    """
    from hear_ced.tags import csv_header, render_timeline, select_tags, window_line, window_record
    from hear_ced.timeline import check_window, tag_stream

    fmt = output_format(as_json, as_csv)
    top = tag_count(top, threshold)
    model = tagger(onnx, variant, model_file, exact, device)
    labels = output_labels(model, labels_file, onnx)
    check_window(model, window)
    if fmt == "csv":
        click.echo(csv_header(timeline=True), nl=False)
    try:
        for start, end, probs in tag_stream(model, sys.stdin.buffer, rate, window, hop):
            tags = select_tags(probs, labels, top, threshold)
            if fmt == "json":
                click.echo(json.dumps(window_record(start, end, tags)))
            elif fmt == "csv":
                click.echo(render_timeline("-", [(start, end, tags)], "csv"), nl=False)
            else:
                click.echo(window_line(start, end, tags))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def _passes_only_default(ctx: click.Context, _param: click.Parameter, value):
    """--hop-ms and --passes: options of the default method, refused with --published."""
    if ctx.params.get("published") and value is not None:
        raise click.BadParameter("sets the default method's timestamps; --published has its own")
    return value


@main.command()
@click.argument(
    "inputs", metavar="FILE_OR_FOLDER...", nargs=-1, required=True, type=click.Path(exists=True)
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the embeddings (resumed when it holds a run of the same settings).",
)
@model_choice
@click.option(
    "--embeddings",
    "kinds",
    type=click.Choice(["scene", "timestamps", "both"]),
    default="scene",
    show_default=True,
    help="Scene embeddings (one vector per file), timestamp embeddings or both.",
)
@click.option(
    "--published",
    is_flag=True,
    is_eager=True,
    help="Embed as the original CED HEAR wrapper did (the published HEAR scores' method).",
)
@click.option(
    "--hop-ms",
    type=click.FloatRange(0, 50, min_open=True),
    callback=_passes_only_default,
    help="Milliseconds between timestamp embeddings (default method; the HEAR modules' 50).",
)
@click.option(
    "--passes",
    type=click.IntRange(min=1),
    callback=_passes_only_default,
    help="Shifted passes filling the timestamp grid in (default method; the HEAR modules' 2; "
    "a divisor of 16).",
)
@batch_size_option("Files of one length")
@device_option
@click.option(
    "--onnx",
    type=click.Path(exists=True, dir_okay=False),
    help="Scene embeddings from this graph of 'hear-ced export-onnx --output embeddings' "
    "on onnxruntime (torch not needed).",
)
def embed(
    inputs: tuple[str, ...],
    out: str,
    variant: str,
    model_file: str | None,
    kinds: str,
    published: bool,
    hop_ms: float | None,
    passes: int | None,
    batch_size: int,
    device: torch.device | None,
    onnx: str | None,
) -> None:
    """Write the embeddings of each audio FILE, and of the audio files in each FOLDER, to --out.

    The HEAR modules' embeddings (docs/embed.md), one .npy per file and kind
    under its path in the folder (NAME.scene.npy, NAME.timestamps.npy with
    NAME.times.npy in ms), then index.csv (file, name, seconds, timestamps)
    and scene.npy, the scene embeddings of index.csv's rows stacked. A file
    whose outputs exist is skipped, so an interrupted run resumes. A file
    that cannot be read is reported and the others are embedded; the exit
    status is then 1, after a summary line.
    """
    from pathlib import Path

    from hear_ced.audio import audio_files
    from hear_ced.common.files import claim_folder, file_sha256
    from hear_ced.common.logs import progress_bar
    from hear_ced.embeddings import (
        KINDS,
        graph_embeddings,
        is_done,
        output_names,
        torch_embeddings,
        write_arrays,
        write_index,
    )

    wanted = list(KINDS) if kinds == "both" else [kinds]
    paths = audio_files(inputs, required=True)
    names = output_names(paths, inputs)
    if onnx is not None:
        refuse_torch_options(
            model_file,
            device,
            {"--published": published, "--embeddings timestamps": "timestamps" in wanted},
            "embeds scenes",
        )
        from hear_ced.runtime import OnnxEmbedder

        model = OnnxEmbedder(onnx)
        plan = {"graph": file_sha256(onnx), "method": "default"}
    else:
        one_model(model_file)
        from hear_ced.hear import load

        given = {"hop_ms": hop_ms, "passes": passes}
        settings = {name: value for name, value in given.items() if value is not None}
        model = load(
            model_file or "",
            variant=None if model_file else variant,
            published=published,
            batch_size=batch_size,
            **settings,
        )
        if device is not None:
            model = model.to(device)
        source = file_sha256(model_file) if model_file else variant
        plan = {"model": source, "method": model.embedding_method}
        plan.update({name: getattr(model, name) for name in given if hasattr(model, name)})
    out_dir = Path(out)
    claim_folder(
        out_dir,
        {**plan, "embeddings": wanted},
        "embed.json",
        advice="use another --out folder, or delete this one to start over",
    )
    by_path = dict(zip(paths, names, strict=True))
    pending = [p for p, n in by_path.items() if not is_done(out_dir, n, wanted)]
    if len(pending) < len(paths):
        log.info(
            "%d of %d files already embedded in %s", len(paths) - len(pending), len(paths), out
        )
    if onnx is not None:
        outcomes = graph_embeddings(model, pending, batch_size)
    else:
        outcomes = torch_embeddings(model, pending, wanted, batch_size)
    failed = []
    with progress_bar(total=len(pending), unit="file", desc="embed", logger=log) as bar:
        for outcome in outcomes:
            if outcome.error is not None:
                bar.clear()
                click.ClickException(outcome.error).show()
                failed.append(outcome.path)
            else:
                write_arrays(out_dir, by_path[outcome.path], outcome.result)
            bar.update()
    done = write_index(out_dir, paths, names, wanted)
    log.info("%d files embedded in %s (index.csv)", done, out)
    report_failures(len(paths), failed, done="embedded")


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
    help="native: one .safetensors file; hf: a Hugging Face model folder (mispeech/ced-* layout) "
    "with its own transformers code.",
)
@click.option("--force", is_flag=True, help="With --to hf: write into a folder that holds files.")
def convert(source: str, target: str, variant: str | None, layout: str, force: bool) -> None:
    """Convert a checkpoint (original .pt, Hugging Face folder or native) to TARGET.

    With --to hf, TARGET is a folder holding model.safetensors, config.json
    (with the model's class names), preprocessor_config.json and the
    transformers code that runs them (trust_remote_code=True, no network),
    ready for upload to the Hugging Face Hub.
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
