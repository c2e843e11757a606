"""The consistency invariant, end to end: the student is fed exactly what the teacher was fed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hear_ced.checkpoints import load_model_file
from hear_ced.distill.ablation.protocol import ROWS
from hear_ced.distill.augment import AugmentConfig, epoch_seeds, mixup_partner
from hear_ced.distill.config import load_config
from hear_ced.distill.data import AudioStore
from hear_ced.distill.extract import SaveLogitsConfig, save_logits
from hear_ced.distill.train import epoch_order, train
from hear_ced.distill.views import AugmentedClips, clip_samples, load_rows
from hear_ced.model import CED
from tests.distill.corpus_helpers import (
    prepared_corpus,
    random_teacher,
    tiny_overrides,
)

SECONDS = 1.0
N_ROWS = 12
EPOCHS = 2
BATCH = 4
# Every row mixed and shifted, masks on: the hardest case for consistency.
AUGMENT = AugmentConfig(mixup=True, mixup_p=1.0, shift_p=1.0, time_mask_width=20, freq_mask_width=8)


@pytest.fixture
def fed(monkeypatch):
    """Every (model, mel) pair passed to ``CED.forward_mel`` while the fixture is active."""
    calls: list[tuple[int, torch.Tensor]] = []
    original = CED.forward_mel

    def recording(self, mel):
        calls.append((id(self), mel.detach().clone()))
        return original(self, mel)

    monkeypatch.setattr(CED, "forward_mel", recording)
    return calls


def test_student_input_equals_teacher_input_bit_for_bit(tmp_path, fed):
    train_tsv, _ = prepared_corpus(tmp_path / "corpus", N_ROWS, 4, SECONDS)
    teacher = random_teacher(tmp_path / "teacher.safetensors")
    run_seed = 3

    # The teacher side: the real save-logits run, rows in order, batch by batch.
    save_logits(
        SaveLogitsConfig(
            teachers=[str(teacher)],
            train_tsv=str(train_tsv),
            out_dir=str(tmp_path / "logits"),
            k=5,
            epochs=EPOCHS,
            augment=AUGMENT,
            batch_size=BATCH,
            run_seed=run_seed,
            clip_seconds=SECONDS,
        ),
        progress=False,
    )
    teacher_fed = torch.cat([mel for _, mel in fed])
    assert teacher_fed.shape[0] == EPOCHS * N_ROWS
    fed.clear()

    # The student side: the real training loop, rows in its shuffled order.
    overrides = tiny_overrides(train_tsv, None, SECONDS, tmp_path / "run")
    cfg = load_config(
        None,
        overrides
        + [
            "targets.kind=logits",
            f"targets.logits_dir={tmp_path / 'logits'}",
            f"optim.epochs={EPOCHS}",
            f"optim.batch_size={BATCH}",
            "optim.adam_8bit=false",
            "augment.mixup=true",
            "augment.mixup_p=1.0",
            "augment.shift_p=1.0",
            "seed=5",
        ],
    )
    train(cfg)
    student_fed = torch.cat([mel for _, mel in fed])
    assert student_fed.shape == teacher_fed.shape

    for epoch in range(EPOCHS):
        order = epoch_order(cfg.seed, epoch, N_ROWS)
        assert not np.array_equal(order, np.arange(N_ROWS))  # the two sides batch differently
        for position, row in enumerate(order):
            seen_by_teacher = teacher_fed[epoch * N_ROWS + row]
            seen_by_student = student_fed[epoch * N_ROWS + position]
            assert torch.equal(seen_by_student, seen_by_teacher), (epoch, row)

    # The views are really augmented: masked, mixed with another row, and new each epoch.
    rows = load_rows(train_tsv, SECONDS, 1.0)
    seeds = epoch_seeds(run_seed, 0, N_ROWS)
    partners = [mixup_partner(int(s), N_ROWS, AUGMENT)[0] for s in seeds]
    assert sum(p not in (-1, i) for i, p in enumerate(partners)) >= N_ROWS // 2
    plain = AugmentedClips(rows, AudioStore(), seeds, AUGMENT, clip_samples(SECONDS))
    model = load_model_file(teacher)
    with torch.no_grad():
        clean = model.mel(torch.from_numpy(np.stack([plain.clip(i) for i in range(N_ROWS)])))
    first_epoch = teacher_fed[:N_ROWS]
    assert all(not torch.equal(first_epoch[i], clean[i]) for i in range(N_ROWS))
    time_masked = (first_epoch == AUGMENT.mask_value).all(dim=1).any(dim=1)
    assert time_masked.sum() >= N_ROWS // 2
    assert not torch.equal(teacher_fed[:N_ROWS], teacher_fed[N_ROWS:])


def test_clip_samples_rounds_seconds_at_16_khz():
    assert clip_samples(10.0) == 160_000
    assert clip_samples(0.5) == 8_000


def test_ablation_rows_are_the_papers_in_its_order():
    flags = [(r.teacher_augmented, r.student_augmented) for r in ROWS]
    assert flags == [(False, False), (False, True), (True, False), (True, True)]
    assert [r.name for r in ROWS][::3] == ["no augmentation", "consistent (CED)"]
