"""hear-validator accepts a sized module with generated weights in the published layout.

The sized modules are one implementation under four names (``test_published``
loads each with its option); the validator's checks of the API run on one.
"""

import warnings

import pytest

from hear_ced.model import variant_config


@pytest.mark.slow
def test_hear_validator_passes(published_weights, monkeypatch):
    from hearvalidator import validate  # imports TensorFlow: only where it runs

    # The published file names, in the published (pickled state dict) layout.
    monkeypatch.setenv("HEAR_CED_WEIGHTS", str(published_weights))
    checker = validate.ValidateModel("hear_ced.tiny", "", device="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="We suggest a interval")  # hop > 50 ms
        checker()  # raises validate.ModelError on any failed check
    assert checker.model.scene_embedding_size == variant_config("tiny").embed_dim
