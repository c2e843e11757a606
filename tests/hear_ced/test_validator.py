"""hear-validator accepts every sized module with generated weights."""

import warnings

import pytest
import torch
from hearvalidator import validate

from hear_ced.model import PUBLISHED_SIZES, build_model
from hear_ced.weights import PUBLISHED_FILES

from .layouts import save_original


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    for variant in PUBLISHED_SIZES:
        # The published file names, in the published (pickled state dict) layout.
        save_original(build_model(variant), folder / PUBLISHED_FILES[variant])
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("variant", PUBLISHED_SIZES)
def test_hear_validator_passes(weights_folder, monkeypatch, variant):
    monkeypatch.setenv("HEAR_CED_WEIGHTS", str(weights_folder))
    checker = validate.ValidateModel(f"hear_ced.{variant}", "", device="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="We suggest a interval")  # hop > 50 ms
        checker()  # raises validate.ModelError on any failed check
    assert checker.model.scene_embedding_size == build_model(variant).embed_dim
