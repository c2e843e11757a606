"""Random-weight models of the published sizes, built once per test session.

Building CED-Base takes seconds; the parameter counts, hear-validator and the
heareval runner all use the same four models.
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
def published_weights(tmp_path_factory, published_models) -> Path:
    """A ``HEAR_CED_WEIGHTS`` folder: the published file names, in the published (pickled) layout."""
    folder = tmp_path_factory.mktemp("published_weights")
    for variant, model in published_models.items():
        save_original(model, folder / PUBLISHED_FILES[variant])
    return folder
