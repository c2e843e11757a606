"""Random-weight models of the published sizes, built once per test session.

Building CED-Base takes seconds; the parameter counts use the four models, the
hear-validator and heareval runner tests CED-Tiny's published weights file.
"""

from pathlib import Path

import pytest
import torch

from hear_ced.model import CED, PUBLISHED_SIZES, build_model
from hear_ced.weights import PUBLISHED_FILES

from .layouts import save_original


@pytest.fixture(scope="session")
def published_models() -> dict[str, CED]:
    """``build_model(size)`` for every published size (seeded; tests must not change them)."""
    torch.manual_seed(0)
    return {variant: build_model(variant) for variant in PUBLISHED_SIZES}


@pytest.fixture(scope="session")
def published_weights(tmp_path_factory) -> Path:
    """A ``HEAR_CED_WEIGHTS`` folder: CED-Tiny under its published name, in the published layout."""
    folder = tmp_path_factory.mktemp("published_weights")
    torch.manual_seed(0)
    save_original(build_model("tiny"), folder / PUBLISHED_FILES["tiny"])
    return folder
