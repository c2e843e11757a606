"""Bytes per sample-epoch of the stored teacher outputs, plain store vs compact layout.

Synthetic teacher outputs: per-row logits ~ N(-4, 2) plus a per-class prior
~ N(0, 1.5), sigmoid, top-K. Both layouts are written to disk for real and
their file sizes divided by the row count. The plain store (``distill.logits``)
gzips its HDF5 datasets, so its size depends on the data; the compact layout's
does only through the index gaps.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import compact
from ced_common.config import to_plain
from ced_common.logs import progress_bar
from distill.augment import AugmentConfig, epoch_seeds
from distill.data import Row
from distill.logits import EpochWriter, LogitHeader, LogitStore, open_for_writing

log = logging.getLogger(__name__)

NUM_CLASSES = 527
KS = (10, 20, 40, 100, 527)
PAPER_BYTES_K20 = 84
RUN_SEED = 1234
EPOCH = 0
LARGE_K = 100


def synthetic_topk(n: int, k: int, seed: int = 0, block: int = 20_000):
    """(n, K) float16 probabilities (descending) and int16 class indices of a made-up teacher."""
    rng = np.random.default_rng(seed)
    prior = rng.normal(0.0, 1.5, NUM_CLASSES)
    values = np.empty((n, k), np.float16)
    indexes = np.empty((n, k), np.int16)
    for start in range(0, n, block):
        stop = min(n, start + block)
        probs = 1.0 / (1.0 + np.exp(-(rng.normal(-4.0, 2.0, (stop - start, NUM_CLASSES)) + prior)))
        top = np.argsort(-probs, axis=1)[:, :k]
        values[start:stop] = np.take_along_axis(probs, top, 1)
        indexes[start:stop] = top
    return values, indexes


def _plain_store_bytes(folder: Path, values, indexes, seeds) -> tuple[int, float]:
    n, k = values.shape
    header = LogitHeader(
        k=k,
        num_classes=NUM_CLASSES,
        epochs=1,
        augment=to_plain(AugmentConfig()),
        teachers=[],
        dataset_fingerprint="synthetic",
        run_seed=RUN_SEED,
        n_rows=n,
        block_rows=16_384,
    )
    rows = [Row(f"clip{i}.wav", "shard.h5", 0, 160_000) for i in range(n)]
    open_for_writing(folder, header, rows)
    writer = EpochWriter(folder, header, EPOCH)
    for block in range(writer.n_blocks):
        span = writer.block_rows(block)
        writer.write_block(block, values[span], indexes[span], seeds[span])
    path = writer.finish()
    start = time.perf_counter()
    LogitStore(folder).read(EPOCH, np.arange(n))
    return path.stat().st_size, time.perf_counter() - start


def run(n_rows: int = 100_000, ks: tuple[int, ...] = KS) -> dict:
    """Bytes per sample-epoch for each K in both layouts, with encode/decode speeds."""
    rows = []
    for k in progress_bar(ks, desc="storage", logger=log):
        # Large K: fewer rows keep the run short; the sizes per row do not depend on N.
        n = n_rows if k <= LARGE_K else max(1, n_rows // 5)
        seeds = epoch_seeds(RUN_SEED, EPOCH, n)
        values, indexes = synthetic_topk(n, k)
        with tempfile.TemporaryDirectory() as tmp:
            plain_bytes, plain_read_s = _plain_store_bytes(
                Path(tmp) / "plain", values, indexes, seeds
            )
            start = time.perf_counter()
            arrays = compact.encode(
                values, indexes, seeds, num_classes=NUM_CLASSES, run_seed=RUN_SEED, epoch=EPOCH
            )
            path = compact.write(Path(tmp) / "compact.npz", arrays)
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            got_values, got_indexes, got_seeds = compact.decode(compact.read(path))
            decode_s = time.perf_counter() - start
            want_values, want_indexes = compact.canonical_order(values, indexes)
            lossless = (
                np.array_equal(got_values.view(np.uint16), want_values.view(np.uint16))
                and np.array_equal(got_indexes, want_indexes)
                and np.array_equal(got_seeds, seeds)
            )
            rows.append(
                {
                    "k": k,
                    "n_rows": n,
                    "raw_bytes_per_row": 4 * k + 4,
                    "plain_bytes_per_row": plain_bytes / n,
                    "plain_read_rows_per_s": n / plain_read_s,
                    "compact_bytes_per_row": path.stat().st_size / n,
                    "compact_encode_rows_per_s": n / encode_s,
                    "compact_decode_rows_per_s": n / decode_s,
                    "compact_lossless": lossless,
                }
            )
    return {"paper_bytes_k20": PAPER_BYTES_K20, "num_classes": NUM_CLASSES, "rows": rows}
