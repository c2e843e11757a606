import numpy as np
import pytest
import torch

from hear_ced.common.config import from_dict, to_plain
from hear_ced.distill.augment import AugmentConfig, epoch_seeds
from hear_ced.distill.logits import (
    EpochWriter,
    LogitHeader,
    LogitStore,
    LogitStoreMismatch,
    open_for_writing,
)


def _header(n: int, **changes) -> LogitHeader:
    values = dict(
        k=20,
        num_classes=527,
        epochs=2,
        augment=to_plain(AugmentConfig()),
        teachers=[{"name": "t", "sha256": "ab" * 32}],
        dataset_fingerprint="f" * 64,
        run_seed=0,
        n_rows=n,
        block_rows=64,
    )
    values.update(changes)
    return LogitHeader(**values)


def _teacher_like(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-K of sigmoid probabilities: sorted, mostly small, like an ensemble's output."""
    logits = torch.randn(n, 527, generator=torch.Generator().manual_seed(seed)) * 2 - 4
    values, indexes = torch.sigmoid(logits).topk(k)
    return values.numpy(), indexes.numpy()


def _fill(
    directory, header: LogitHeader, epoch: int, rank: int, values, indexes, seeds
) -> EpochWriter:
    writer = EpochWriter(directory, header, epoch, rank)
    for block in writer.missing_blocks():
        rows = writer.block_rows(block)
        writer.write_block(block, values[rows], indexes[rows], seeds[rows])
    writer.finish()
    return writer


def test_round_trip_with_two_ranks(tmp_path):
    n = 300
    header = _header(n, world_size=2)
    open_for_writing(tmp_path, header)
    stored = {}
    for epoch in range(2):
        values, indexes = _teacher_like(n, 20, epoch)
        seeds = epoch_seeds(0, epoch, n)
        stored[epoch] = (values, indexes, seeds)
        for rank in range(2):
            _fill(tmp_path, header, epoch, rank, values, indexes, seeds)
    assert not (tmp_path / "parts").exists()
    store = LogitStore(tmp_path)
    assert store.header == header and store.num_epochs == 2 and store.complete_epochs() == [0, 1]
    picks = np.array([299, 0, 17, 18, 150])
    for epoch in range(2):
        values, indexes, seeds = store.read(epoch, picks)
        assert values.dtype == np.float16 and indexes.dtype == np.int16 and seeds.dtype == np.int32
        assert np.array_equal(values, stored[epoch][0][picks].astype(np.float16))
        assert np.array_equal(indexes, stored[epoch][1][picks])
        assert np.array_equal(seeds, stored[epoch][2][picks])
        assert np.array_equal(store.seeds(epoch), stored[epoch][2])
    dense = store.dense_targets(1, picks)
    assert dense.shape == (5, 527) and (dense > 0).sum(1).tolist() == [20] * 5
    row = stored[1][1][150]
    assert torch.equal(
        dense[4, row], torch.from_numpy(stored[1][0][150].astype(np.float16).astype(np.float32))
    )


def test_interrupted_epoch_keeps_written_blocks(tmp_path):
    n = 200
    header = _header(n)
    open_for_writing(tmp_path, header)
    values, indexes = _teacher_like(n, 20, 0)
    seeds = epoch_seeds(0, 0, n)
    writer = EpochWriter(tmp_path, header, 0)
    assert writer.missing_blocks() == [0, 1, 2, 3]
    for block in (0, 2):
        rows = writer.block_rows(block)
        writer.write_block(block, values[rows], indexes[rows], seeds[rows])
    # A process killed mid-write leaves only its temporary file.
    (writer.parts / ".block_0000001.npz.k1ll3d.tmp.npz").write_bytes(b"half a block")
    again = EpochWriter(tmp_path, header, 0)
    assert again.missing_blocks() == [1, 3]
    with pytest.raises(RuntimeError, match="not written"):
        again.finish()
    with pytest.raises(FileNotFoundError, match="not finished epoch 0"):
        LogitStore(tmp_path).read(0, [0])
    stale = tmp_path / ".epoch_000_rank_000.h5.k1ll3d.tmp.h5"  # a killed finish()
    stale.write_bytes(b"partial epoch file")
    _fill(tmp_path, header, 0, 0, values, indexes, seeds)
    assert np.array_equal(LogitStore(tmp_path).read(0, np.arange(n))[1], indexes)
    assert not stale.exists()


def test_store_refuses_other_data_k_or_augmentation(tmp_path):
    header = _header(10)
    open_for_writing(tmp_path, header)
    store = LogitStore(tmp_path)
    assert store.mismatches("f" * 64, augment=AugmentConfig()) == []
    (rows,) = store.mismatches("e" * 64)
    assert "training rows differ" in rows
    (augment,) = store.mismatches("f" * 64, augment=AugmentConfig(time_mask_width=100))
    assert "time_mask_width" in augment
    for change in ({"k": 10}, {"run_seed": 1}, {"teachers": [{"name": "t", "sha256": "cd" * 32}]}):
        with pytest.raises(LogitStoreMismatch, match=next(iter(change))):
            open_for_writing(tmp_path, _header(10, **change))
    # Same settings, another teacher path: the sha256 is what counts.
    open_for_writing(tmp_path, _header(10, teachers=[{"name": "u", "sha256": "ab" * 32}]))


def test_header_validation():
    with pytest.raises(ValueError, match="k must be"):
        _header(10, k=0)
    with pytest.raises(ValueError, match="augment.bogus"):
        _header(10, augment={"bogus": 1})
    with pytest.raises(ValueError, match="colour"):
        from_dict(LogitHeader, {**to_plain(_header(10)), "colour": "red"})


def test_bytes_per_sample_epoch_at_k20(tmp_path):
    """100k rows written through the writer: at most the 84 bytes of the raw payload."""
    n = 100_000
    header = _header(n, epochs=1, block_rows=16384)
    open_for_writing(tmp_path, header)
    values, indexes = _teacher_like(n, 20, 0)
    _fill(tmp_path, header, 0, 0, values, indexes, epoch_seeds(0, 0, n))
    sizes = LogitStore(tmp_path).bytes_on_disk()
    per_sample_epoch = sizes["epoch_files"] / n
    print(f"bytes per sample-epoch at K=20, N={n}: {per_sample_epoch:.2f}")
    assert per_sample_epoch <= 84
    assert np.array_equal(LogitStore(tmp_path).read(0, [n - 1])[1][0], indexes[n - 1])
