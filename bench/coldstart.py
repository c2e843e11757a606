"""Cold start: one ``hear-ced tag`` process on one 10 s file, end to end.

Each run is a fresh process (imports, weights, audio, inference, printing),
timed by ``/usr/bin/time`` (wall seconds and peak resident memory). The
floor is a process that only imports torch, which every path needs. Runs of
the compared commands alternate, so they see the same machine load.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from hear_ced.checkpoints import save_model
from hear_ced.fast import calibrated_model, synthetic_audio
from hear_ced.frontend import SAMPLE_RATE
from hear_ced.labels import audioset_labels

TIME = "/usr/bin/time"


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one run of ``command``, as /usr/bin/time reports them."""
    done = subprocess.run(
        [TIME, "-f", "@@ %e %M", *command], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    line = next(x for x in reversed(done.stderr.splitlines()) if x.startswith("@@ "))
    wall, rss_kb = line.split()[1:]
    return float(wall), int(rss_kb) / 1024


def run(runs: int = 7, variant: str = "tiny") -> dict:
    """Min and median of ``runs`` fresh ``hear-ced tag`` processes, auto and --exact."""
    if not Path(TIME).exists():
        return {"skipped": f"{TIME} not found"}
    script = shutil.which("hear-ced", path=str(Path(sys.executable).parent)) or "hear-ced"
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / f"{variant}.safetensors"
        save_model(calibrated_model(variant), model, labels=audioset_labels())
        clip = Path(tmp) / "clip.wav"
        sf.write(clip, synthetic_audio(1)[0].numpy(), SAMPLE_RATE)
        commands = {
            "import torch only": [sys.executable, "-c", "import torch"],
            "tag (auto)": [script, "tag", "--model", str(model), str(clip)],
            "tag --exact": [script, "tag", "--exact", "--model", str(model), str(clip)],
        }
        for command in commands.values():  # warm the page cache and the .pyc files
            timed(command)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                samples[name].append(timed(command))
    rows = []
    for name, values in samples.items():
        walls = [w for w, _ in values]
        rows.append(
            {
                "command": name,
                "runs": len(walls),
                "min_s": min(walls),
                "median_s": statistics.median(walls),
                "peak_rss_mb": max(r for _, r in values),
            }
        )
    return {
        "variant": variant,
        "load_avg": os.getloadavg(),
        "rows": rows,
    }
