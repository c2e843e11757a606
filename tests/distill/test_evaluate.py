"""ced-distill evaluate: JSON output, ensembles, prepared and raw eval lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from distill.cli import main
from distill.data import read_table
from distill.evaluate import evaluate_checkpoint
from distill.metrics import tagging_metrics
from hear_ced.checkpoints import load_model_file
from tests.distill.corpus_helpers import NUM_CLASSES, prepared_corpus, random_teacher

SECONDS = 1.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    _, eval_tsv = prepared_corpus(root, 4, 16, SECONDS)
    models = [random_teacher(root / f"m{i}.safetensors", seed=i) for i in range(2)]
    return eval_tsv, models, root


def independent_scores(eval_tsv, model_paths):
    """Probabilities straight from the wav files, one clip at a time."""
    table = read_table(eval_tsv, required=("filename", "labels"))
    targets = np.zeros((len(table), NUM_CLASSES), np.float32)
    probs = []
    for path in model_paths:
        model = load_model_file(path)
        rows = []
        for i, (filename, labels) in enumerate(
            zip(table["filename"], table["labels"], strict=True)
        ):
            for label in labels.split(";"):
                targets[i, int(label)] = 1.0
            wave, rate = sf.read(filename, dtype="float32")
            assert rate == 16000
            with torch.no_grad():
                rows.append(torch.sigmoid(model(torch.from_numpy(wave)[None]))[0].numpy())
        probs.append(np.stack(rows))
    return targets, np.mean(probs, axis=0)


def test_evaluate_cli_writes_ensemble_json(setup, tmp_path):
    eval_tsv, models, _ = setup
    out = tmp_path / "result.json"
    result = CliRunner().invoke(
        main, ["evaluate", str(models[0]), str(models[1]), str(eval_tsv), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "| ensemble of 2 |" in result.output
    data = json.loads(out.read_text())
    assert data["clips"] == 16 and data["classes"] == NUM_CLASSES
    assert len(data["members"]) == 2
    targets, probs = independent_scores(eval_tsv, models)
    expected = tagging_metrics(targets, probs)
    for key in ("mAP", "mAUC", "d_prime"):
        assert data["ensemble"][key] == pytest.approx(expected[key], abs=1e-5)


def test_raw_wav_list_gives_the_same_numbers_as_the_prepared_one(setup):
    eval_tsv, models, root = setup
    raw = evaluate_checkpoint(models[0], root / "corpus" / "eval.tsv")
    prepared = evaluate_checkpoint(models[0], eval_tsv)
    assert raw["model"] == pytest.approx(prepared["model"])


def test_class_count_mismatch_is_refused(setup, tmp_path):
    eval_tsv, _, _ = setup
    from hear_ced.checkpoints import save_model
    from hear_ced.model import CED, CEDConfig

    small = save_model(
        CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=3)),
        tmp_path / "s.safetensors",
    )
    with pytest.raises(ValueError, match="not a class index"):
        evaluate_checkpoint(small, eval_tsv)
