"""Teacher ensembles: the mean of the teachers' sigmoid probabilities."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from hear_ced.checkpoints import load_model_file, weights_sha256
from hear_ced.common.files import file_sha256
from hear_ced.model import CED
from hear_ced.tagging import pass_probabilities


class TeacherEnsemble:
    """Frozen teachers that agree on classes; ``identities`` name them in logit headers.

    All teachers share CED's fixed log-mel frontend, so the spectrogram is
    computed (and augmented) once for the whole ensemble.
    """

    def __init__(self, models: Sequence[CED], identities: Sequence[dict] | None = None) -> None:
        if not models:
            raise ValueError("a teacher ensemble needs at least one model")
        classes = {m.config.num_classes for m in models}
        if len(classes) != 1:
            raise ValueError(f"teachers disagree on the number of classes: {sorted(classes)}")
        self.models = [m.eval() for m in models]
        for model in self.models:
            model.requires_grad_(False)
        if identities is None:
            identities = [
                {"name": f"model{i}", "sha256": weights_sha256(m)} for i, m in enumerate(models)
            ]
        self.identities = [dict(identity) for identity in identities]

    @classmethod
    def from_paths(
        cls, paths: Sequence[str | os.PathLike], device: str | torch.device = "cpu"
    ) -> TeacherEnsemble:
        """Any checkpoint ``load_model_file`` reads; identities are the files' sha256."""
        models, identities = [], []
        for path in paths:
            path = Path(path)
            models.append(load_model_file(path).to(device))
            identities.append(
                {"name": path.name, "path": str(path.resolve()), "sha256": file_sha256(path)}
            )
        return cls(models, identities)

    @property
    def num_classes(self) -> int:
        return self.models[0].config.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.models[0].parameters()).device

    @torch.no_grad()
    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 64, frames) dB log-mel, before spectrogram augmentation."""
        return self.models[0].mel(wave.to(self.device))

    @torch.no_grad()
    def probs(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 64, frames) augmented log-mel -> (B, classes) mean sigmoid probability."""
        mel = mel.to(self.device)
        total = sum(pass_probabilities(model, mel) for model in self.models)
        return total / len(self.models)
