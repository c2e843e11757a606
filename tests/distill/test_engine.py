"""The training engine: schedule, accumulation, clipping, precision, exact resume, records, no sync."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from hear_ced.distill.checkpointing import load_state
from hear_ced.distill.config import OptimConfig
from hear_ced.distill.engine import (
    Engine,
    Loop,
    Schedule,
    engine_identity,
    optimizer_steps,
)

N_ROWS, FEATURES, CLASSES = 14, 6, 3


def reference_learning_rate(step: int, total_steps: int, optim: OptimConfig) -> float:
    """The formula training used before the engine (warmup, cosine to a floor), written out."""
    peak = optim.lr
    if step < optim.warmup_steps:
        return peak * (step + 1) / optim.warmup_steps
    decay_steps = max(1, total_steps - 1 - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    floor = peak * optim.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    ("lr", "warmup", "ratio", "total"),
    [(1e-3, 10, 0.1, 111), (3e-3, 100, 0.1, 3000), (1e-4, 1, 0.0, 7), (0.5, 0, 0.25, 40)],
)
def test_schedule_values_are_the_formula_bit_for_bit(lr, warmup, ratio, total):
    optim = OptimConfig(lr=lr, warmup_steps=warmup, min_lr_ratio=ratio)
    schedule = Schedule(lr, total, warmup, ratio)
    for step in range(total + 5):
        assert schedule.lr(step) == reference_learning_rate(step, total, optim), step


def test_a_group_scale_multiplies_the_rate():
    body, head = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [body]}, {"params": [head], "lr_scale": 10.0}], lr=1)
    schedule = Schedule(1e-3, 50, 5)
    assert schedule.apply(optimizer, 7) == schedule.lr(7)
    assert [g["lr"] for g in optimizer.param_groups] == [schedule.lr(7), schedule.lr(7) * 10.0]


# --------------------------------------------------------------------------
# A small model and a caller of the engine.


class Tiny(nn.Module):
    """Linear layers with dropout, so the loop's RNG use shows in the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.Dropout(0.3), nn.Linear(16, CLASSES))

    def forward_mel(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


DATA = torch.Generator().manual_seed(0)
INPUTS = torch.randn(N_ROWS, FEATURES, generator=DATA)
TARGETS = (torch.rand(N_ROWS, CLASSES, generator=DATA) > 0.5).float()


def make_engine(
    settings: dict,
    batch: int,
    epochs: int,
    optimizer: str = "adam",
    state_path=None,
    seed: int = 0,
    noise: float = 0.01,
) -> tuple[Engine, Loop, dict]:
    """An engine over ``Tiny`` on the fixed rows, and a loop whose batches follow (seed, epoch).

    ``prepare`` adds noise from torch's global RNG, and the caller keeps a
    step count of its own as resumable state: every RNG and state path is used.
    """
    torch.manual_seed(seed)
    model = Tiny()
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    micro = batch // settings.get("accumulate", 1)
    batches_per_epoch = math.ceil(N_ROWS / micro)
    total = optimizer_steps(batches_per_epoch, settings.get("accumulate", 1)) * epochs
    engine = Engine(
        model,
        opt,
        Schedule(1e-2, total, 2),
        **settings,
        state_path=state_path,
    )
    mine = {"batches_seen": 0}

    def batches(epoch: int, first: int):
        order = np.random.default_rng([7, epoch]).permutation(N_ROWS)
        for lo in range(first * micro, N_ROWS, micro):
            mine["batches_seen"] += 1
            yield order[lo : lo + micro]

    def prepare(epoch: int, rows: np.ndarray):
        del epoch
        return INPUTS[rows] + noise * torch.randn(len(rows), FEATURES), TARGETS[rows]

    loop = Loop(
        batches,
        prepare,
        batches_per_epoch,
        epochs,
        state=lambda: dict(mine),
    )
    return engine, loop, mine


def weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.model.state_dict().items()}


def test_two_micro_batches_step_like_one_batch_of_both():
    """Also with a short last micro-batch: each weighs by its share of the step's clips."""
    whole, whole_loop, _ = make_engine({}, batch=4, epochs=2, optimizer="sgd", noise=0.0)
    split, split_loop, _ = make_engine(
        dict(accumulate=2), batch=4, epochs=2, optimizer="sgd", noise=0.0
    )
    # Random draws per micro-batch differ from one draw for the whole batch: no dropout.
    for engine in (whole, split):
        engine.model.net[1].p = 0.0
    whole.run(whole_loop)
    split.run(split_loop)
    assert whole.step == split.step == 2 * math.ceil(N_ROWS / 4)  # 14 rows: the last step holds 2
    for key, value in weights(whole).items():
        torch.testing.assert_close(weights(split)[key], value, rtol=1e-6, atol=1e-7)


def test_clipping_caps_the_gradient_norm():
    model = nn.Linear(FEATURES, CLASSES)
    model.forward_mel = model.forward  # the engine steps a model's forward_mel
    start = [p.detach().clone() for p in model.parameters()]
    batch = [(100 * INPUTS, TARGETS)]

    def update_norm(clip: float) -> float:
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), start, strict=True):
                p.copy_(p0)
        # Plain SGD at rate 1: the update is the (clipped) gradient itself.
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        engine = Engine(model, optimizer, Schedule(1.0, 1, 0, 1.0), clip_grad_norm=clip)
        engine.train_step(batch)
        return float(
            torch.cat([(p - p0).flatten() for p, p0 in zip(model.parameters(), start, strict=True)])
            .norm()
            .item()
        )

    assert update_norm(0.0) > 1.0  # unclipped, the gradient is large
    assert update_norm(0.5) == pytest.approx(0.5, rel=1e-4)


def test_bf16_on_cpu_keeps_float32_master_weights_and_a_finite_loss():
    seen = []
    engine, loop, _ = make_engine(dict(precision="bf16"), batch=4, epochs=1)
    engine.model.net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = []
    loop = dataclasses.replace(loop, on_step=lambda step, loss: losses.append(loss))
    engine.run(loop)
    assert seen and set(seen) == {torch.bfloat16}  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    # The default on CPU stays float32 throughout.
    seen.clear()
    default, default_loop, _ = make_engine({}, batch=4, epochs=1)
    default.model.net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    default.run(default_loop)
    assert set(seen) == {torch.float32}


# --------------------------------------------------------------------------
# Resumable state.


class Stop(Exception):
    pass


@pytest.mark.parametrize(("accumulate", "stop_at"), [(1, 4), (1, 10), (2, 7)])
def test_resume_mid_epoch_is_bit_exact(tmp_path, accumulate, stop_at):
    settings = dict(accumulate=accumulate, checkpoint_every_steps=3)
    whole, loop, whole_mine = make_engine(settings, batch=4, epochs=3, state_path=tmp_path / "a.st")
    whole.run(loop)

    cut, cut_loop, _ = make_engine(settings, batch=4, epochs=3, state_path=tmp_path / "b.st")

    def stop(step, loss):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        cut.run(dataclasses.replace(cut_loop, on_step=stop))
    saved = load_state(tmp_path / "b.st")["progress"]
    # The last state is the one of step 3, 6 or 9: mid-epoch (4 steps an epoch).
    assert saved["step"] == (stop_at - 1) // 3 * 3 and saved["step"] % 4

    # A fresh process: other initial weights, another global RNG state.
    resumed, resumed_loop, mine = make_engine(
        settings, batch=4, epochs=3, state_path=tmp_path / "b.st", seed=123
    )
    torch.manual_seed(999)
    caller = resumed.restore(load_state(tmp_path / "b.st"))
    assert caller["batches_seen"] > 0
    mine.update(caller)
    resumed.run(resumed_loop)
    assert (resumed.epoch, resumed.step) == (whole.epoch, whole.step)
    assert mine == whole_mine  # the caller's own state came back with the rest
    for key, value in weights(whole).items():
        assert torch.equal(weights(resumed)[key], value), key
    a, b = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
    assert torch.equal(torch.get_rng_state(), _rng_after(whole))


def _rng_after(engine: Engine) -> torch.Tensor:
    """The global RNG state right after ``engine`` finished (the uninterrupted run's)."""
    return load_state(engine.state_path)["rng"]["torch"]


def test_the_engine_identity_names_the_resolved_precision_and_the_process_count():
    """What a resume must share beyond the settings (the run folder's claim compares it)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine_identity("auto", cpu) == {"precision": "float32", "world_size": 1}
    assert engine_identity("auto", cuda, 2) == {"precision": "bfloat16", "world_size": 2}
    assert engine_identity("bf16", cpu)["precision"] == "bfloat16"
    assert engine_identity("fp32", cuda)["precision"] == "float32"


# --------------------------------------------------------------------------
# Throughput records, and no host synchronisation per step.


def test_throughput_records_give_clips_per_second_and_the_data_wait_share(caplog):
    engine, loop, _ = make_engine(dict(log_every_steps=2), batch=2, epochs=1)
    batches = loop.batches

    def slow(epoch, first):
        for rows in batches(epoch, first):
            time.sleep(0.02)
            yield rows

    with caplog.at_level(logging.INFO, logger="hear_ced.distill.engine"):
        engine.run(dataclasses.replace(loop, batches=slow))
    records = [r.throughput for r in caplog.records if hasattr(r, "throughput")]
    kinds = [r["kind"] for r in records]
    assert kinds == ["step"] * 3 + ["epoch"]  # 7 steps: records at 2, 4, 6 and the epoch's
    for record in records:
        assert record["clips_per_s"] > 0 and math.isfinite(record["loss"])
        assert 0 < record["data_wait_share"] <= 1
        # The measured wait holds at least the sleeps: 2 clips a batch, 0.02 s each.
        wall = record["steps"] * 2 / record["clips_per_s"]
        assert record["data_wait_share"] * wall >= record["steps"] * 0.02 * 0.99
    assert "clips/s" in caplog.text and "waiting for data" in caplog.text
    assert records[-1]["steps"] == 7


def test_a_record_interval_that_divides_the_epoch_gives_one_record_at_its_end(caplog):
    """7 steps an epoch, a record every 7: the epoch's record only, not a step record too."""
    engine, loop, _ = make_engine(dict(log_every_steps=7), batch=2, epochs=2)
    with caplog.at_level(logging.INFO, logger="hear_ced.distill.engine"):
        engine.run(loop)
    kinds = [r.throughput["kind"] for r in caplog.records if hasattr(r, "throughput")]
    assert kinds == ["epoch", "epoch"]


def test_the_loss_is_read_only_at_record_points(monkeypatch):
    reads = []
    for name in ("item", "cpu", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # SGD: torch's Adam reads its step counters back on CPU, which is its business.
    engine, loop, _ = make_engine({}, batch=1, epochs=2, optimizer="sgd")
    engine.run(loop)
    assert engine.step == 2 * N_ROWS
    assert len(reads) <= 2 * 2  # one stacked read of the losses per epoch (to CPU, to numpy)
