"""What a HEAR run is asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eval.hear_run.errors import RunError

PROBES = ("linear", "mlp", "both")
GRIDS = ("default", "fast", "faster")


@dataclass
class RunSettings:
    module: str
    model: str | None
    tasks_dir: Path
    out: Path
    tasks: tuple[str, ...] = ()
    grid: str = "default"
    grid_points: int = 8
    probe: str = "both"
    model_options: dict = field(default_factory=dict)  # keyword arguments of load_model
    jobs: int = 1  # tasks run in parallel processes
    restart: bool = False  # delete an earlier run in ``out`` first

    @property
    def parts(self) -> tuple[str, ...]:
        """Downstream models to score: ``mlp`` (heareval) and/or ``linear`` (our probe)."""
        if self.probe not in PROBES:
            raise RunError(f"unknown probe {self.probe!r}; choose one of {PROBES}")
        return ("mlp", "linear") if self.probe == "both" else (self.probe,)

    def result_path(self, task: str) -> Path:
        return self.out / "results" / f"{task}.json"
