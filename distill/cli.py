"""``ced-distill``: data preparation, logit storage, training, evaluation, demo."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from hear_ced.common.cli import FriendlyGroup, extra_imports, set_option
from hear_ced.common.files import write_json

with extra_imports(("train",)):
    from hear_ced.distill.augment import AugmentConfig
    from hear_ced.distill.config import (
        PRECISIONS,
        FinetuneConfig,
        finetune_option,
        load_finetune_config,
    )
    from hear_ced.model import PUBLISHED_SIZES


def out_option(**settings):
    """``--out``: the command's output folder."""
    return click.option("--out", "out_dir", type=click.Path(file_okay=False), **settings)


labels_option = click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    help="Label CSV/TSV (index,mid,display_name) naming the classes [default: "
    "class_labels_indices.csv beside the TSV, AudioSet's for 527 classes, else the models' own].",
)
device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="cpu, cuda, cuda:N or auto (under torchrun: cuda, each process on its LOCAL_RANK's GPU).",
)
teachers_option = click.option(
    "--teacher",
    "teachers",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Teacher checkpoint; repeat for an ensemble (the mean of their probabilities).",
)
restart_option = click.option(
    "--restart", is_flag=True, help="Delete an earlier run in the output folder and start over."
)


# Bad input found by the library (configs, logit stores, checkpoints, launches)
# is a ValueError (ConfigError, LogitStoreMismatch, CheckpointError,
# DistributedSetupError) or an OSError: FriendlyGroup prints it as one line.
@click.group(cls=FriendlyGroup, extras=("train",))
def main() -> None:
    """Consistent ensemble distillation of CED audio taggers.

    Typical flow: synth (or your own wav list) -> prepare -> train teachers
    (targets.kind=labels) -> save-logits -> verify-logits -> train the
    student (targets.kind=logits) -> evaluate. `demo` runs all of it on a
    small synthetic corpus.
    """


@main.command()
@out_option(required=True, help="Output folder.")
@click.option("--train", "n_train", default=1000, show_default=True, help="Training clips.")
@click.option("--eval", "n_eval", default=300, show_default=True, help="Evaluation clips.")
@click.option("--seconds", default=10.0, show_default=True, help="Clip length in seconds.")
@click.option("--seed", default=0, show_default=True, help="Corpus seed (same seed, same files).")
def synth(out_dir: str, n_train: int, n_eval: int, seconds: float, seed: int) -> None:
    """Write a synthetic multi-label corpus (wavs, train.tsv, eval.tsv, class CSV)."""
    from hear_ced.distill.synth import synthesize

    root = synthesize(out_dir, n_train, n_eval, clip_seconds=seconds, seed=seed)
    click.echo(f"wrote {n_train} train and {n_eval} eval clips under {root}")
    click.echo(f"train list: {root / 'train.tsv'}\neval list:  {root / 'eval.tsv'}")


@main.command()
@click.argument("wavlist", type=click.Path(exists=True, dir_okay=False))
@out_option(required=True, help="Output folder.")
@click.option("--shard-size", default=50_000, show_default=True, help="Files per HDF5 shard.")
@click.option("--workers", default=4, show_default=True, help="Decoding threads.")
def prepare(wavlist: str, out_dir: str, shard_size: int, workers: int) -> None:
    """Pack the files of WAVLIST (TSV with a `filename` column) into int16 HDF5 shards.

    Writes OUT/hdf5/*.h5 and OUT/labels/<name>.tsv (the list plus `hdf5path`).
    Re-running keeps finished shards.
    """
    from hear_ced.distill.data import prepare as prepare_files

    result = prepare_files(wavlist, out_dir, shard_size=shard_size, workers=workers)
    click.echo(
        f"{result.n_written} files in {len(result.shards)} shard(s); labels: {result.labels_tsv}"
    )
    for filename, reason in result.skipped:
        click.echo(f"skipped {filename}: {reason}", err=True)


@main.command("save-logits")
@teachers_option
@click.option(
    "--train-tsv",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Prepared labels TSV.",
)
@out_option(required=True, help="Logits folder.")
@click.option("--k", default=20, show_default=True, help="Top-K probabilities kept per row.")
@click.option("--epochs", default=10, show_default=True, help="Augmented epochs to store (E).")
@click.option("--seconds", "clip_seconds", default=10.0, show_default=True, help="Clip length.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--seed", "run_seed", default=0, show_default=True, help="Seed of the per-row seeds.")
@click.option("--no-augment", is_flag=True, help="Store logits of un-augmented clips (ablations).")
@click.option("--mixup/--no-mixup", default=False, show_default=True, help="Consistent mixup.")
@click.option(
    "--time-mask-width",
    default=AugmentConfig().time_mask_width,
    show_default=True,
    type=click.IntRange(min=0),
    help="Widest time mask in frames (at most half a clip; 100 frames a second).",
)
@labels_option
@device_option
@click.option("--num-workers", default=0, show_default=True)
@restart_option
def save_logits_command(
    no_augment: bool, mixup: bool, time_mask_width: int, restart: bool, **settings
) -> None:
    """Store the teacher ensemble's top-K probabilities for every row and epoch.

    Resumable; under torchrun every process writes its share. A larger
    --epochs on an existing --out adds the missing epochs and keeps the
    stored ones.
    """
    from hear_ced.distill.extract import SaveLogitsConfig, save_logits

    augment = (
        AugmentConfig.none()
        if no_augment
        else AugmentConfig(mixup=mixup, time_mask_width=time_mask_width)
    )
    settings["teachers"] = list(settings["teachers"])
    cfg = SaveLogitsConfig(augment=augment, **settings)
    result = save_logits(cfg, restart=restart)
    click.echo(
        f"{result.n_rows} rows x {result.epochs} epochs at K={cfg.k} in {Path(cfg.out_dir)}: "
        f"{result.bytes_per_sample_epoch:.1f} bytes per sample-epoch"
    )


@main.command("verify-logits")
@click.argument("logits_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--rows", "n_rows", default=64, show_default=True, help="Stored rows to recompute.")
@click.option("--seed", default=0, show_default=True, help="Which rows are sampled.")
@click.option(
    "--teacher", "teachers", multiple=True, help="Teacher files, if moved since save-logits."
)
@click.option("--train-tsv", default=None, help="Prepared TSV, if moved since save-logits.")
def verify_logits_command(logits_dir, n_rows, seed, teachers, train_tsv) -> None:
    """Recompute sampled stored rows from their seeds; exit 1 on any mismatch."""
    from hear_ced.distill.extract import verify_logits

    report = verify_logits(
        logits_dir,
        n_rows=n_rows,
        seed=seed,
        teachers=list(teachers) or None,
        train_tsv=train_tsv,
    )
    click.echo(report.summary())
    for problem in report.mismatches:
        click.echo(f"  {problem}", err=True)
    if not report.ok:
        sys.exit(1)


@main.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@set_option()
@restart_option
def train_command(config: str, overrides: tuple[str, ...], restart: bool) -> None:
    """Train a student (or a teacher) from a YAML CONFIG; resumes an unfinished run.

    Launch with torchrun for several processes (gloo on CPU, nccl on GPU).
    A longer optim.epochs is another run (the schedule spans the run): give
    it a new out_dir and model.init=<old out_dir>/final.safetensors.
    """
    from hear_ced.distill.config import load_config
    from hear_ced.distill.train import train

    result = train(load_config(config, overrides), restart=restart)
    click.echo(f"final checkpoint: {result.final_checkpoint}")
    if result.metrics:
        click.echo(json.dumps(result.metrics))


@main.command("evaluate")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True))
@click.argument("eval_tsv", metavar="EVAL", type=click.Path(exists=True))
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Also write the JSON here."
)
@out_option(help="Write per-clip predictions.csv and, one label per clip, confusion.png here.")
@click.option("--batch-size", default=32, show_default=True)
@device_option
@labels_option
def evaluate_command(checkpoints, eval_tsv, json_out, out_dir, batch_size, device, labels) -> None:
    """Scores of CHECKPOINTS (several: also their ensemble) on the labelled clips EVAL.

    EVAL is a TSV with `filename` and `labels` (';'-separated class indices,
    MIDs or display names of the label file) and optionally `hdf5path`; or,
    as finetune takes it, a folder with a sub-folder per class or a CSV
    (`filename`, `labels`), whose class names must be the model's. Prints mAP,
    mean AUC and d' (one label per clip: also accuracy, macro-F1 and the
    confusion matrix), then the JSON (per-class precision, recall and F1).
    """
    from hear_ced.distill.evaluate import evaluate_checkpoint, format_table

    result = evaluate_checkpoint(
        list(checkpoints),
        eval_tsv,
        batch_size=batch_size,
        device=device,
        labels=labels,
        out=out_dir,
    )
    click.echo(format_table(result))
    click.echo(json.dumps(result, indent=2))
    if json_out:
        write_json(Path(json_out), result, sort_keys=True)


@main.command()
@click.argument("student", type=click.Path(exists=True, dir_okay=False))
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True))
@teachers_option
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Also write the JSON here."
)
@click.option("--batch-size", default=32, show_default=True)
@device_option
def agreement(student, audio, teachers, json_out, batch_size, device) -> None:
    """How close STUDENT comes to its teachers on unlabelled AUDIO (no labels needed).

    AUDIO: a prepared TSV (as `prepare` writes: the corpus) or audio files and
    folders. mAP: the student's, with the ensemble's decisions (probability
    >= 0.5) as labels; top-1: share of clips whose top class is the
    ensemble's; BCE: the distillation loss to the ensemble's probabilities;
    KL: BCE less the ensemble's own entropy (0 where they agree).
    """
    from hear_ced.distill.evaluate import agreement as measure

    result = measure(student, teachers, audio, batch_size=batch_size, device=device)
    click.echo(
        f"{result['clips']} clips: mAP {result['mAP']:.4f}, top-1 agreement "
        f"{result['top1']:.4f}, BCE {result['bce']:.4f}, KL {result['kl']:.4f}"
    )
    if json_out:
        write_json(Path(json_out), result, sort_keys=True)


@main.command()
@out_option(default="demo_out", show_default=True)
@set_option("Override a plan value, e.g. --set corpus.n_train=1200 (value read as YAML).")
@restart_option
def demo(out_dir: str, overrides: tuple[str, ...], restart: bool) -> None:
    """Whole pipeline on a synthetic corpus: teachers, logits, distilled and hard-label students.

    The plan is distill/configs/demo.yaml. Writes OUT/report.md,
    OUT/report.json and OUT/student.safetensors; re-running skips finished
    stages.
    """
    from hear_ced.distill.demo import run_demo

    report = run_demo(out_dir, overrides, restart=restart)
    click.echo(Path(report["report_md"]).read_text())


def _experiment(
    kind: str,
    out_dir: str,
    seeds: int | None,
    smoke: bool,
    workers: int,
    report_only: bool,
    teacher_training: str = "plain",
) -> None:
    """Run (or resume, or only report) the ablation or the k-sweep in ``out_dir``."""
    import shlex

    from hear_ced.distill.ablation.protocol import protocol_for
    from hear_ced.distill.ablation.run import run_experiment

    # The command that trains the runs; --report-only only renders them.
    args = [a for a in sys.argv[1:] if a != "--report-only"]
    command = " ".join(["ced-distill", *map(shlex.quote, args)])
    protocol = protocol_for(smoke, seeds, teacher_training)
    run_experiment(out_dir, protocol, kind, command, workers, report_only)
    click.echo(Path(out_dir, "ablation.md").read_text())


_EXPERIMENT_OPTIONS = [
    click.option("--seeds", type=int, default=None, help="Paired seeds (default: the protocol's)."),
    click.option("--smoke", is_flag=True, help="A seconds-long run of the same code (tests)."),
    click.option(
        "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Parallel runs."
    ),
    click.option(
        "--report-only", is_flag=True, help="Train nothing; report the seeds finished so far."
    ),
]


def _experiment_options(fn):
    for option in reversed(_EXPERIMENT_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@out_option(
    help="Output folder [default: runs/ablation, or runs/ablation_augmented_teachers "
    "with --teachers augmented].",
)
@click.option(
    "--teachers",
    "teacher_training",
    type=click.Choice(["plain", "augmented"]),
    default="plain",
    show_default=True,
    help="Train the teachers on the plain clips or on augmented views (the student views' "
    "augmentation); augmented runs the learned-teacher rows only.",
)
@_experiment_options
def ablation(out_dir: str | None, teacher_training: str, **options) -> None:
    """Table 3: teacher x student augmentation, learned and oracle teachers, paired seeds.

    The protocol is fixed in distill/ablation/protocol.py. Writes OUT/ablation.md
    (protocol first), OUT/ablation.json and OUT/ablation.png; re-running
    skips finished runs.
    """
    if out_dir is None:
        out_dir = "runs/ablation" + (
            "_augmented_teachers" if teacher_training == "augmented" else ""
        )
    _experiment("table3", out_dir, teacher_training=teacher_training, **options)


@main.command("k-sweep")
@out_option(default="runs/k_sweep", show_default=True)
@_experiment_options
def k_sweep(out_dir: str, **options) -> None:
    """Figure 3: consistent teaching at several top-K, paired seeds, validation selection."""
    _experiment("k_sweep", out_dir, **options)


# finetune's flags, one per FinetuneConfig field (but DATA and --out), with its defaults.
_FINETUNE_FLAGS = {
    "init": {
        "help": f"Starting weights: a size ({', '.join(PUBLISHED_SIZES)}) or a checkpoint file."
    },
    "frozen": {
        "off": "--full",
        "help": "--frozen: keep the model as it is and fit only a new linear head on its "
        "embeddings (a probe: seconds); --full: train the whole model, with the options "
        "below up to --balance.",
    },
    "epochs": {"type": click.IntRange(min=1)},
    "batch_size": {"type": click.IntRange(min=1)},
    "lr": {
        "type": click.FloatRange(min=0, min_open=True),
        "help": "Peak learning rate (the new head gets 10x).",
    },
    "weight_decay": {"type": click.FloatRange(min=0), "help": "AdamW weight decay."},
    "augment": {
        "help": "Seeded waveform shift and time/frequency masks of every training clip.",
    },
    "mixup": {"help": "Mix training clips and their labels in pairs (seeded)."},
    "balance": {"help": "Draw files of rarer classes more often (every class equally often)."},
    "valid_fraction": {
        "type": click.FloatRange(0, 1, min_open=True, max_open=True),
        "help": "Share of each class held out for validation (unless the CSV has a split column).",
    },
    "clip_seconds": {
        "type": click.FloatRange(min=0, min_open=True),
        "help": "Longer files are cut to this length.",
    },
    "seed": {"type": int, "help": "Split, order and crop seed."},
    "device": {"type": str},
    "precision": {
        "type": click.Choice(PRECISIONS),
        "help": "bf16 autocast (float32 weights); auto: bf16 on CUDA, fp32 on CPU.",
    },
    "clip_grad_norm": {
        "type": click.FloatRange(min=0),
        "help": "Largest total gradient norm (0: no clipping).",
    },
    "accumulate": {
        "type": click.IntRange(min=1),
        "help": "Split each batch into this many micro-batches (less memory, same steps).",
    },
}


def _finetune_flags(fn):
    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    for name, settings in reversed(_FINETUNE_FLAGS.items()):
        flag, settings = finetune_option(name), dict(settings)
        if isinstance(defaults[name], bool):  # a switch: --x/--no-x, or its own "off" name
            flag = f"{flag}/{settings.pop('off', '--no-' + flag[2:])}"
        option = click.option(flag, name, default=defaults[name], show_default=True, **settings)
        fn = option(fn)
    return fn


@main.command()
@click.argument("data", required=False, type=click.Path(exists=True))
@out_option(help="Output folder.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML file of settings (the flags' names with underscores: batch_size, out_dir, ...).",
)
@set_option("Override a setting, e.g. --set lr=3e-4 (value read as YAML).")
@_finetune_flags
@restart_option
@click.pass_context
def finetune(
    ctx: click.Context,
    data: str | None,
    out_dir: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    restart: bool,
    **flags,
) -> None:
    """Fine-tune a CED on your own classes: DATA is a folder per class or a CSV.

    The CSV has `filename` and `labels` (';'-separated for several per file)
    and optionally `split` (train/valid). Writes OUT/final.safetensors (the
    best epoch, with your class names: `hear-ced tag --model` prints them),
    OUT/report.md and, for one label per file, OUT/confusion.png. Settings
    come from --config, then the flags given, then --set.
    """
    from hear_ced.distill.finetune import finetune as run_finetune

    given = {
        name: value
        for name, value in flags.items()
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    given |= {k: v for k, v in (("data", data), ("out_dir", out_dir)) if v is not None}
    cfg = load_finetune_config(config_path, given, overrides)
    result = run_finetune(cfg, restart=restart)
    kept = "of the fitted head" if cfg.frozen else f"at epoch {result.best_epoch}"
    click.echo(
        f"best validation {result.metric_name} {result.best_metric:.4f} {kept}; "
        f"model: {result.final_checkpoint}; report: {result.report}"
    )


if __name__ == "__main__":
    main()
