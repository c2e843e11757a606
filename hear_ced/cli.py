"""``hear-ced``: tag audio files, convert checkpoints, export ONNX."""

from __future__ import annotations

import json
import sys

import click

from hear_ced.model import VARIANTS

PUBLISHED = [v for v in VARIANTS if v != "large"]


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
        type=click.Choice(PUBLISHED),
        default="mini",
        show_default=True,
        help="Published model size (weights from $HEAR_CED_WEIGHTS, the cache or a download).",
    )(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option(
    "--exact",
    is_flag=True,
    help="Run in float32 as published, instead of the fastest path within 0.01 of it.",
)
def tag(
    files: tuple[str, ...],
    variant: str,
    model_file: str | None,
    top: int,
    as_json: bool,
    exact: bool,
) -> None:
    """Print the top AudioSet labels of each audio FILE (wav, flac, ...; any rate)."""
    from hear_ced.tagging import load_tagger, tag_file

    model = load_tagger(variant, model_file)
    if not exact:
        from hear_ced.fast import optimize_for_inference

        model = optimize_for_inference(model, "auto")
    for path in files:
        try:
            tags = tag_file(model, path, top)
        except ValueError as exc:
            click.echo(f"{path}: error: {exc}", err=True)
            sys.exit(1)
        if as_json:
            click.echo(json.dumps({"file": path, "tags": [t.__dict__ for t in tags]}))
            continue
        click.echo(path)
        for t in tags:
            click.echo(f"  {t.probability:6.3f}  {t.label}")


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.argument("target", type=click.Path(dir_okay=False))
@click.option(
    "-m",
    "--variant",
    type=click.Choice(PUBLISHED),
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
