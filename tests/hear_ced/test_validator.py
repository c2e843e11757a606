"""hear-validator accepts every sized module with generated weights."""

import warnings

import pytest
from hearvalidator import validate

from hear_ced.model import PUBLISHED_SIZES


@pytest.mark.slow
@pytest.mark.parametrize("variant", PUBLISHED_SIZES)
def test_hear_validator_passes(published_models, published_weights, monkeypatch, variant):
    # The published file names, in the published (pickled state dict) layout.
    monkeypatch.setenv("HEAR_CED_WEIGHTS", str(published_weights))
    checker = validate.ValidateModel(f"hear_ced.{variant}", "", device="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="We suggest a interval")  # hop > 50 ms
        checker()  # raises validate.ModelError on any failed check
    assert checker.model.scene_embedding_size == published_models[variant].embed_dim
