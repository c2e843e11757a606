"""What an X-ARES run is asked to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hear_ced.eval.hear_run.errors import RunError
from hear_ced.eval.hear_run.settings import resolved_model
from hear_ced.eval.tasks import size_of_module
from hear_ced.hear import DEFAULT_PASSES

CUSTOM = "hear_ced.custom"  # any checkpoint, whatever size it holds
PASSES = (1, 2, 4, 8, 16)  # the divisors of CED's 16-frame patch


@dataclass
class XaresRunSettings:
    module: str  # hear_ced.<size>, a bare size, or hear_ced.custom (needs ``model``)
    model: str | None
    tasks_dir: Path
    out: Path
    tasks: tuple[str, ...] = ()
    passes: int = DEFAULT_PASSES
    restart: bool = False

    def __post_init__(self) -> None:
        if "." not in self.module:
            self.module = f"hear_ced.{self.module}"
        if self.module != CUSTOM and size_of_module(self.module) is None:
            raise RunError(f"unknown module {self.module!r}: use hear_ced.<size> or {CUSTOM}")
        if self.module == CUSTOM and not self.model:
            raise RunError(f"{CUSTOM} needs --model: it has no default weights")
        if self.passes not in PASSES:
            raise RunError(f"--passes must divide CED's 16-frame patch: one of {PASSES}")
        self.model = resolved_model(self.model)
        self.out, self.tasks_dir = Path(self.out).resolve(), Path(self.tasks_dir).resolve()

    @property
    def variant(self) -> str | None:
        """The size CEDEncoder loads (None: whatever the checkpoint holds)."""
        return size_of_module(self.module)

    @property
    def work_dir(self) -> Path:
        """X-ARES's working folder: its ``env/``, the encoder module, copied task files.

        Under ``embeddings`` so that ``--restart`` removes it with the rest.
        """
        return self.out / "embeddings"

    def result_path(self, task: str) -> Path:
        return self.out / "results" / f"{task}.json"

    def log_path(self, task: str, step: str) -> Path:
        return self.out / "logs" / f"{task}.{step}.log"
