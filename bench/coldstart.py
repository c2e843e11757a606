"""Cold start: one ``hear-ced tag`` process on one 10 s file, end to end.

Each run is a fresh process (imports, weights, audio, inference, printing),
timed by ``/usr/bin/time`` (wall seconds and peak resident memory). The
floor is a process that only imports torch, which every torch path needs.
``tag --onnx`` runs from a non-editable install without torch (``pip install .``
of this checkout into its own virtual environment, kept in the cache folder
while the sources are unchanged), with the optimised-graph cache emptied
before each cold run and kept for the warm ones. Runs of the compared
commands alternate, so they see the same machine load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from hear_ced.checkpoints import save_model
from hear_ced.export import export_onnx
from hear_ced.fast import calibrated_model, synthetic_audio
from hear_ced.frontend import SAMPLE_RATE
from hear_ced.labels import audioset_labels
from hear_ced.specs import cache_dir

TIME = "/usr/bin/time"
ROOT = Path(__file__).resolve().parents[1]


def torch_free_install() -> Path:
    """The ``hear-ced`` script of a virtual environment holding ``pip install .`` of this
    checkout and no torch; built once per state of the tracked sources."""
    files = subprocess.run(
        ["git", "ls-files", "hear_ced", "setup.cfg", "setup.py", "pyproject.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    venv = cache_dir() / "bench" / f"torch-free-{digest.hexdigest()[:12]}"
    script = venv / "bin" / "hear-ced"
    if script.exists():
        return script
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        for name in tracked:
            if (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(source)], check=True)
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, check=False
    )
    if probe.returncode == 0:
        raise RuntimeError(f"{venv} holds torch: the core install should not")
    return script


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
    onnx_script = torch_free_install()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / f"{variant}.safetensors"
        save_model(calibrated_model(variant), model, labels=audioset_labels())
        graph = export_onnx(calibrated_model(variant), Path(tmp) / f"{variant}.onnx")
        clip = Path(tmp) / "clip.wav"
        sf.write(clip, synthetic_audio(1)[0].numpy(), SAMPLE_RATE)
        onnx_tag = [str(onnx_script), "tag", "--onnx", str(graph), str(clip)]
        commands = {
            "import torch only": [sys.executable, "-c", "import torch"],
            "tag (auto)": [script, "tag", "--model", str(model), str(clip)],
            "tag --exact": [script, "tag", "--exact", "--model", str(model), str(clip)],
            "tag --onnx, torch-free install, first run": onnx_tag,
            "tag --onnx, torch-free install, later runs": onnx_tag,
        }
        for command in commands.values():  # warm the page cache and the .pyc files
            timed(command)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                if "first run" in name:  # the optimised graph made again
                    for entry in graph.parent.glob(f".{graph.name}.optimized-*"):
                        entry.unlink()
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
    medians = {row["command"]: row["median_s"] for row in rows}
    return {
        "variant": variant,
        "onnx_warm_to_import_torch": medians["tag --onnx, torch-free install, later runs"]
        / medians["import torch only"],
        "load_avg": os.getloadavg(),
        "rows": rows,
    }
