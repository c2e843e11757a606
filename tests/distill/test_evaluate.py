"""ced-distill evaluate: JSON output, ensembles, prepared and raw eval lists."""

from __future__ import annotations

import json
import weakref

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import hear_ced.distill.evaluate as evaluate
from hear_ced.checkpoints import load_model_file
from hear_ced.distill.cli import main
from hear_ced.distill.data import read_table
from hear_ced.distill.evaluate import EvalSet, evaluate_checkpoint, predict
from hear_ced.distill.metrics import tagging_metrics
from tests.distill.corpus_helpers import NUM_CLASSES, prepared_corpus, random_teacher

SECONDS = 1.0
_READ_CLIP = evaluate._read_clip


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


def test_format_table_lists_members_then_the_ensemble():
    metrics = {"mAP": 0.5, "mAUC": 0.75, "d_prime": 0.9539}
    result = {
        "members": [{"name": f"m{i}.safetensors", **metrics} for i in range(2)],
        "ensemble": metrics,
    }
    assert evaluate.format_table(result).splitlines() == [
        "| model | mAP | mAUC | d' |",
        "|---|---|---|---|",
        "| m0.safetensors | 0.5000 | 0.7500 | 0.954 |",
        "| m1.safetensors | 0.5000 | 0.7500 | 0.954 |",
        "| ensemble of 2 | 0.5000 | 0.7500 | 0.954 |",
    ]


def test_raw_wav_list_gives_the_same_numbers_as_the_prepared_one(setup):
    eval_tsv, models, root = setup
    raw = evaluate_checkpoint([models[0]], root / "corpus" / "eval.tsv")
    prepared = evaluate_checkpoint([models[0]], eval_tsv)
    assert raw["model"] == pytest.approx(prepared["model"])


def test_class_count_mismatch_is_refused(setup, tmp_path):
    eval_tsv, _, _ = setup
    from hear_ced.checkpoints import save_model
    from hear_ced.model import CED, CEDConfig

    small = save_model(
        CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=3)),
        tmp_path / "s.safetensors",
    )
    with pytest.raises(ValueError, match="holds 24 classes; the model has 3 outputs"):
        evaluate_checkpoint([small], eval_tsv)


def test_audioset_model_on_a_24_class_list_is_refused(setup, tmp_path):
    """A 527-class model's indices fit a 24-class list; the list's label file says otherwise."""
    eval_tsv, _, _ = setup
    from hear_ced.checkpoints import save_model
    from hear_ced.model import CED, CEDConfig

    audioset = save_model(
        CED(CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=527)),
        tmp_path / "as.safetensors",
    )
    result = CliRunner().invoke(main, ["evaluate", str(audioset), str(eval_tsv)])
    assert result.exit_code != 0
    assert "holds 24 classes; the model has 527 outputs" in result.output


def _relabelled(eval_tsv, tmp_path, convert) -> tuple:
    """The eval list with each label index replaced by ``convert(index)``, and its targets."""
    from hear_ced.labels import read_label_file

    classes = read_label_file(eval_tsv.parent / "class_labels_indices.csv")
    table = read_table(eval_tsv, required=("filename", "labels"))
    table["labels"] = [
        ";".join(convert(classes, int(i)) for i in labels.split(";")) for labels in table["labels"]
    ]
    out = tmp_path / "relabelled.tsv"
    table.to_csv(out, sep="\t", index=False)
    return out, classes


@pytest.mark.parametrize(
    "convert",
    [lambda c, i: c.mids[i], lambda c, i: c.names[i]],
    ids=["mid", "display_name"],
)
def test_labels_may_be_mids_or_display_names(setup, tmp_path, convert):
    eval_tsv, models, _ = setup
    relabelled, classes = _relabelled(eval_tsv, tmp_path, convert)
    assert not read_table(relabelled)["labels"].str.match(r"^[0-9;]+$").any()
    as_names = evaluate_checkpoint(
        [models[0]], relabelled, labels=eval_tsv.parent / "class_labels_indices.csv"
    )
    as_indices = evaluate_checkpoint([models[0]], eval_tsv)
    assert as_names["model"] == pytest.approx(as_indices["model"])


def test_display_names_are_read_against_the_names_a_checkpoint_carries(setup, tmp_path):
    eval_tsv, models, _ = setup
    relabelled, classes = _relabelled(eval_tsv, tmp_path, lambda c, i: c.names[i])
    named = load_model_file(models[0])
    assert named.config.labels is None
    from hear_ced.checkpoints import save_model

    path = save_model(named, tmp_path / "named.safetensors", labels=classes.names)
    assert evaluate_checkpoint([path], relabelled)["model"] == pytest.approx(
        evaluate_checkpoint([models[0]], eval_tsv)["model"]
    )


def test_an_unknown_label_names_itself_and_its_row(setup, tmp_path):
    eval_tsv, models, _ = setup
    relabelled, _ = _relabelled(eval_tsv, tmp_path, lambda c, i: "Bagpipes")
    labels_csv = eval_tsv.parent / "class_labels_indices.csv"
    with pytest.raises(ValueError, match=r"relabelled.tsv row 2: label 'Bagpipes' is not"):
        evaluate_checkpoint([models[0]], relabelled, labels=labels_csv)


def test_a_comma_separated_list_names_both_delimiters(setup, tmp_path):
    eval_tsv, models, _ = setup
    table = read_table(eval_tsv)
    commas = tmp_path / "commas.tsv"
    table[["filename", "labels"]].to_csv(commas, sep=",", index=False)
    with pytest.raises(ValueError, match="separated by commas .*expected tabs"):
        evaluate_checkpoint([models[0]], commas)


def _track_clips(monkeypatch) -> list[int]:
    """Patch the clip reader so that ``peaks[-1]`` is the most clips alive at once."""
    alive: set[int] = set()
    peaks = [0]
    original = _READ_CLIP

    def tracked(eval_set, i, store):
        wave = original(eval_set, i, store)
        alive.add(i)
        weakref.finalize(wave, alive.discard, i)
        peaks.append(max(peaks[-1], len(alive)))
        return wave

    monkeypatch.setattr(evaluate, "_read_clip", tracked)
    return peaks


def _wav_eval_set(root, lengths: list[int]) -> EvalSet:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i, n in enumerate(lengths):
        names.append(str(root / f"clip{i}.wav"))
        sf.write(names[-1], (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
    targets = np.zeros((len(lengths), NUM_CLASSES), np.float32)
    targets[:, 0] = 1.0
    return EvalSet(names, [None] * len(lengths), targets)


def test_validation_memory_does_not_grow_with_the_set(setup, tmp_path, monkeypatch):
    _, models, _ = setup
    model = load_model_file(models[0])
    peaks = []
    for n in (6, 24):
        eval_set = _wav_eval_set(tmp_path / str(n), [16000] * n)
        peak = _track_clips(monkeypatch)
        probs = predict([model], eval_set, batch_size=3)
        peaks.append(peak[-1])
        assert probs.shape == (n, NUM_CLASSES) and (probs > 0).all()
    assert peaks[0] == peaks[1] == 3, peaks  # one batch, whatever the set's size


def test_mixed_lengths_stream_bounded_and_match_clip_by_clip(setup, tmp_path, monkeypatch):
    _, models, _ = setup
    model = load_model_file(models[0])
    lengths = [16000, 12000, 9000, 7000, 5000, 3000] * 3  # six lengths interleaved
    eval_set = _wav_eval_set(tmp_path / "mixed", lengths)
    alone = predict([model], eval_set, batch_size=1)
    peak = _track_clips(monkeypatch)
    batched = predict([model], eval_set, batch_size=2)
    assert peak[-1] <= evaluate.PENDING_BATCHES * 2 + 1 < len(lengths)
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)


def write_classes(root, names, per_class=3, seed=0):
    """A folder per class of short noise clips."""
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sf.write(root / name / f"{i}.wav", 0.1 * rng.standard_normal(8000), 16000)
    return root


def named_model(path, labels, seed=0):
    from hear_ced.checkpoints import save_model
    from hear_ced.model import CED, CEDConfig

    torch.manual_seed(seed)
    config = CEDConfig(embed_dim=32, depth=1, num_heads=2, num_classes=len(labels), labels=labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(CED(config), path)


def test_a_class_folder_gets_accuracy_f1_confusion_and_predictions(tmp_path):
    model = named_model(tmp_path / "run_a" / "final.safetensors", ("cat", "dog", "owl"))
    other = named_model(tmp_path / "run_b" / "final.safetensors", ("cat", "dog", "owl"), seed=1)
    data = write_classes(tmp_path / "held", ["cat", "dog"])
    out = tmp_path / "eval"
    args = ["evaluate", str(model), str(other), str(data), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    data_json = json.loads((tmp_path / "r.json").read_text())
    # Two runs' final.safetensors are told apart by their folder and their contents.
    names = [m["name"] for m in data_json["members"]]
    assert names[0].startswith("run_a/final.safetensors (") and names[1].startswith("run_b/")
    assert f"| {names[0]} |" in result.output and f"| {names[1]} |" in result.output
    classification = data_json["classification"]
    assert classification["classes"] == ["cat", "dog", "owl"]
    assert classification["support"] == [3, 3, 0]
    confusion = np.array(classification["confusion"])
    assert confusion.sum() == 6 and confusion[:2].sum(axis=1).tolist() == [3, 3]
    assert classification["accuracy"] == pytest.approx(np.trace(confusion) / 6)
    assert data_json["ensemble"]["accuracy"] == classification["accuracy"]
    predictions = (out / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "filename,labels,predicted,probability" and len(predictions) == 7
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "Confusion (rows: true class" in result.output


def test_evaluation_classes_the_model_lacks_are_each_named(tmp_path):
    model = named_model(tmp_path / "m.safetensors", ("cat", "dog"))
    data = write_classes(tmp_path / "held", ["cat", "cow", "emu"], per_class=1)
    result = CliRunner().invoke(main, ["evaluate", str(model), str(data)])
    assert result.exit_code == 1
    assert "2 class(es) the model does not have: cow, emu (its classes: cat, dog)" in result.output


def test_agreement_of_a_student_with_its_teachers(setup, tmp_path):
    eval_tsv, models, root = setup
    same = CliRunner().invoke(
        main, ["agreement", str(models[0]), str(eval_tsv), "--teacher", str(models[0]),
               "--json", str(tmp_path / "a.json")],
    )  # fmt: skip
    assert same.exit_code == 0, same.output
    scores = json.loads((tmp_path / "a.json").read_text())
    assert scores["clips"] == 16 and scores["top1"] == 1.0
    assert scores["kl"] == pytest.approx(0.0, abs=1e-6)
    # Against an ensemble, on the corpus's audio folder: the measures of the mean probabilities.
    folder = evaluate.agreement(models[0], models, [root / "corpus"])
    clips = evaluate.unlabelled_set([root / "corpus"])
    student = predict([load_model_file(models[0])], clips)
    teachers = predict([load_model_file(m) for m in models], clips)
    assert folder["top1"] == np.mean(student.argmax(1) == teachers.argmax(1))
    assert folder["kl"] > 0
    other = named_model(tmp_path / "other.safetensors", ("cat", "dog"))
    refused = CliRunner().invoke(main, ["agreement", str(models[0]), str(eval_tsv),
                                        "--teacher", str(other)])  # fmt: skip
    assert refused.exit_code == 1
    assert f"the student {models[0]} (24 classes" in refused.output
    assert f"the teacher {other} (2 classes: cat, dog)" in refused.output
