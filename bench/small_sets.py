"""A small real-sound classification set and the fine-tuning runs that chose finetune's defaults.

``python -m bench.small_sets build OUT`` writes OUT/train/<class>/ (15 clips
per class: finetune splits off its validation clips) and OUT/heldout/<class>/
(5 per class, for ``ced-distill evaluate``) for six classes rendered from
recordings nobody here made: freedesktop event sounds (two groups, varied in
gain, pitch and speed with sox), espeak-ng words (several voices, speeds and
pitches) and notes of three General MIDI instruments (FluidR3 soundfont,
fluidsynth). Needs the Debian packages sound-theme-freedesktop, espeak-ng,
sox, fluidsynth and fluid-soundfont-gm.

``python -m bench.small_sets run OUT --init CHECKPOINT`` fine-tunes with each
setting of ``SETTINGS`` for seeds 0-2 (a seed fixes the split, so the settings
are paired) and writes OUT/runs.md: validation score, held-out accuracy and
seconds per run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hear_ced.common.tables import markdown_table

SOUNDS = Path("/usr/share/sounds/freedesktop/stereo")
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
CHIMES = ["bell", "complete", "message", "message-new-instant", "window-attention", "service-login"]
ALERTS = ["dialog-error", "dialog-warning", "suspend-error", "network-connectivity-lost",
          "phone-outgoing-busy", "alarm-clock-elapsed"]  # fmt: skip
INSTRUMENTS = {"piano": 0, "violin": 40, "trumpet": 56}
WORDS = ["hello", "seven", "window", "purple", "table", "morning", "river", "yes", "number",
         "garden", "silver", "open", "music", "forty", "station", "coffee"]  # fmt: skip
VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en+f3", "en-us+f2", "en+m3"]
TRAIN_PER_CLASS, HELDOUT_PER_CLASS = 15, 5
SEEDS = (0, 1, 2)
# name -> finetune flags: the defaults before the measurement, and the settings measured.
SETTINGS = {
    "old defaults: --full --lr 1e-4 --epochs 10": ["--full", "--lr", "1e-4", "--epochs", "10"],
    "--full (40 epochs, lr 1e-3)": ["--full"],
    "--full --augment --weight-decay 0.05 --epochs 30": [
        "--full",
        "--augment",
        "--weight-decay",
        "0.05",
        "--epochs",
        "30",
    ],
    "defaults (frozen model, linear head)": [],
}


def _sox(source: str | Path, target: Path, rng: np.random.Generator) -> None:
    """A variant of ``source``: gain, pitch and speed drawn from ``rng``, mono 16 kHz, <= 3 s."""
    gain = rng.uniform(-9, 3)
    cents = rng.uniform(-300, 300)
    speed = rng.uniform(0.85, 1.15)
    subprocess.run(
        ["sox", str(source), "-c", "1", "-r", "16000", str(target), "trim", "0", "3",
         "gain", f"{gain:.1f}", "pitch", f"{cents:.0f}", "speed", f"{speed:.3f}"],
        check=True, capture_output=True,
    )  # fmt: skip


def _midi_note(note: int, velocity: int, program: int, seconds: float) -> bytes:
    """A one-track MIDI file playing one note (480 ticks per beat at 120 bpm)."""
    ticks = int(seconds * 960)
    delta = bytes(
        [0x80 | (ticks >> 14 & 0x7F), 0x80 | (ticks >> 7 & 0x7F), ticks & 0x7F]
    )  # variable-length quantity, 3 bytes
    events = (
        bytes([0x00, 0xC0, program, 0x00, 0x90, note, velocity])
        + delta
        + bytes([0x80, note, 0x40, 0x00, 0xFF, 0x2F, 0x00])
    )
    header = b"MThd" + (6).to_bytes(4, "big") + bytes([0, 0, 0, 1, 1, 0xE0])
    return header + b"MTrk" + len(events).to_bytes(4, "big") + events


def _render(name: str, index: int, target: Path, rng: np.random.Generator, tmp: Path) -> None:
    if name in ("chime", "alert"):
        source = (CHIMES if name == "chime" else ALERTS)[index % 6]
        _sox(SOUNDS / f"{source}.oga", target, rng)
    elif name == "speech":
        raw = tmp / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", VOICES[rng.integers(len(VOICES))], "-s",
             str(rng.integers(110, 200)), "-p", str(rng.integers(20, 80)), "-w", str(raw),
             WORDS[rng.integers(len(WORDS))]],
            check=True, capture_output=True,
        )  # fmt: skip
        _sox(raw, target, rng)
    else:
        midi, raw = tmp / "note.mid", tmp / "note.wav"
        midi.write_bytes(
            _midi_note(int(rng.integers(48, 84)), int(rng.integers(60, 120)),
                       INSTRUMENTS[name], float(rng.uniform(0.4, 1.5)))
        )  # fmt: skip
        subprocess.run(
            ["fluidsynth", "-ni", "-g", "0.8", "-r", "16000", "-F", str(raw), str(SOUNDFONT),
             str(midi)],
            check=True, capture_output=True,
        )  # fmt: skip
        _sox(raw, target, rng)


def build(out: Path) -> None:
    """OUT/train/<class>/ and OUT/heldout/<class>/ wav files, the same for every run."""
    classes = ["chime", "alert", "speech", *INSTRUMENTS]
    with tempfile.TemporaryDirectory() as tmp:
        for c, name in enumerate(classes):
            rng = np.random.default_rng(c)
            for i in range(TRAIN_PER_CLASS + HELDOUT_PER_CLASS):
                split = "train" if i < TRAIN_PER_CLASS else "heldout"
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                _render(name, i, folder / f"{name}_{i:02d}.wav", rng, Path(tmp))


def run(out: Path, init: str) -> None:
    """Every setting for every seed; OUT/runs.md and OUT/runs.json."""
    rows, results = [], []
    for name, flags in SETTINGS.items():
        for seed in SEEDS:
            run_dir = out / "runs" / f"{len(results) // len(SEEDS)}_seed{seed}"
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "hear_ced.distill.cli", "finetune", str(out / "train"),
                 "--out", str(run_dir), "--init", init, "--seed", str(seed), "--restart",
                 *flags], check=True,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            evaluated = run_dir / "heldout.json"
            subprocess.run(
                [sys.executable, "-m", "hear_ced.distill.cli", "evaluate",
                 str(run_dir / "final.safetensors"), str(out / "heldout"), "--json",
                 str(evaluated)], check=True, capture_output=True,
            )  # fmt: skip
            heldout = json.loads(evaluated.read_text())["model"]["accuracy"]
            valid = max(h["accuracy"] for h in json.loads((run_dir / "history.json").read_text()))
            results.append({"setting": name, "seed": seed, "valid": valid, "heldout": heldout,
                            "seconds": seconds})  # fmt: skip
            rows.append((name, seed, f"{valid:.3f}", f"{heldout:.3f}", f"{seconds:.0f}"))
    (out / "runs.json").write_text(json.dumps(results, indent=1))
    table = markdown_table(["setting", "seed", "validation", "held-out", "seconds"], rows)
    (out / "runs.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "build":
        build(folder)
    else:
        run(folder, sys.argv[sys.argv.index("--init") + 1])
