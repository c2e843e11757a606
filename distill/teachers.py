"""Teacher ensembles (stub)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from hear_ced.model import CED


class TeacherEnsemble:
    def __init__(self, models: Sequence[CED], identities: Sequence[dict] | None = None) -> None:
        raise NotImplementedError

    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike]) -> TeacherEnsemble:
        raise NotImplementedError

    def probs(self, mel: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
