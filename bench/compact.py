"""A compact, lossless layout for one epoch of stored teacher top-K probabilities.

An experiment, not part of the pipeline: ``bench/storage.py`` measures it
against the logit store that ``save-logits`` writes, which comes out smaller
at K <= 100 (BENCHMARKS.md).

The plain layout (``distill.logits``) spends K*2 + K*2 + 4 bytes per row
(84 at K=20). This one stores the same information in about 55:

- Seeds: not stored when they are ``epoch_seeds(run_seed, epoch, n_rows)``
  (how ``save-logits`` draws them); otherwise stored as int32.
- Class indices: a top-K is a *set*, so each row is sorted and stored as gaps
  (first index, then differences minus one), bit-packed at the smallest width
  that holds the row's largest gap (a 4-bit width per row). Rows of equal
  width are packed together, so decoding is a few vectorised numpy calls.
- Values: float16 probabilities are never negative, so the sign bit is
  dropped: 15 bits each, in the row's sorted-index order.

Lossless means: every row decodes to the same (class index -> float16 value)
pairs, bit for bit, and the same seed. Rows come back in a canonical order,
values descending and ties by ascending index (``canonical_order``), which is
what top-K produces up to the order of equal values; ``dense targets`` built
from either layout are identical.

A file is one uncompressed ``.npz`` written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ced_common.files import atomic_path
from distill.augment import epoch_seeds

FORMAT_VERSION = 1
VALUE_BITS = 15  # a non-negative float16 without its sign bit
WIDTH_BITS = 4  # per-row gap width, 1..15 bits
_CHUNK = 1 << 18  # values packed per step; a multiple of 8


@dataclass(frozen=True)
class CompactHeader:
    n_rows: int
    k: int
    num_classes: int
    run_seed: int
    epoch: int
    seeds_derived: bool
    format_version: int = FORMAT_VERSION


def pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Unsigned integers < 2**width -> little-endian bit stream as uint8."""
    values = np.ascontiguousarray(values, dtype=np.uint32).reshape(-1)
    shifts = np.arange(width, dtype=np.uint32)
    # Chunks of a multiple of 8 values end on a byte boundary, so they concatenate.
    parts = [
        np.packbits(
            ((values[i : i + _CHUNK, None] >> shifts) & 1).astype(np.uint8).reshape(-1),
            bitorder="little",
        )
        for i in range(0, len(values), _CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def unpack_bits(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``count`` integers of ``width`` (<= 24) bits, as int64."""
    # float32 matmul is exact below 2**24 and runs on BLAS.
    weights = np.exp2(np.arange(width, dtype=np.float32))
    out = np.empty(count, np.int64)
    chunk_bytes = _CHUNK * width // 8
    for n, i in enumerate(range(0, count, _CHUNK)):
        size = min(_CHUNK, count - i)
        part = packed[n * chunk_bytes : (n + 1) * chunk_bytes]
        bits = np.unpackbits(part, count=size * width, bitorder="little").reshape(size, width)
        out[i : i + size] = bits.astype(np.float32) @ weights
    return out


def canonical_order(values: np.ndarray, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by value descending, equal values by ascending class index."""
    values = np.asarray(values, dtype=np.float16)
    indexes = np.asarray(indexes).astype(np.int64)
    order = np.lexsort((indexes, -values.astype(np.float32)), axis=-1)
    return np.take_along_axis(values, order, 1), np.take_along_axis(indexes, order, 1).astype(
        np.int16
    )


def _check(values: np.ndarray, indexes: np.ndarray, seeds: np.ndarray, num_classes: int) -> None:
    if values.ndim != 2 or values.shape != indexes.shape or seeds.shape != (values.shape[0],):
        raise ValueError(
            f"need values/indexes (n, K) and seeds (n,), got {values.shape}, "
            f"{indexes.shape}, {seeds.shape}"
        )
    if values.size and (indexes.min() < 0 or indexes.max() >= num_classes):
        raise ValueError(f"class indices must be in 0..{num_classes - 1}")
    as_bits = np.asarray(values, dtype=np.float16).view(np.uint16)
    if (as_bits >> VALUE_BITS).any():
        raise ValueError("values must be non-negative float16 (probabilities)")
    if values.size and (np.diff(np.sort(indexes, axis=1), axis=1) == 0).any():
        raise ValueError("a row holds the same class index twice; top-K indices form a set")


def encode(
    values: np.ndarray,
    indexes: np.ndarray,
    seeds: np.ndarray,
    *,
    num_classes: int,
    run_seed: int,
    epoch: int,
) -> dict[str, np.ndarray]:
    """One epoch's (n, K) values, (n, K) indices and (n,) seeds -> named byte arrays."""
    values = np.asarray(values, dtype=np.float16)
    indexes = np.asarray(indexes).astype(np.int64)
    seeds = np.asarray(seeds).astype(np.int32)
    _check(values, indexes, seeds, num_classes)
    n, k = values.shape
    order = np.argsort(indexes, axis=1, kind="stable")
    sorted_idx = np.take_along_axis(indexes, order, 1)
    sorted_val = np.take_along_axis(values, order, 1)
    gaps = np.diff(sorted_idx, axis=1, prepend=-1) - 1
    widths = np.maximum(1, np.ceil(np.log2(gaps.max(axis=1, initial=0) + 1))).astype(np.uint8)
    derived = bool(np.array_equal(seeds, epoch_seeds(run_seed, epoch, n)))
    header = CompactHeader(n, k, num_classes, run_seed, epoch, derived)
    arrays = {
        "header": np.frombuffer(json.dumps(asdict(header)).encode(), np.uint8),
        "widths": pack_bits(widths, WIDTH_BITS),
        "values": pack_bits(sorted_val.view(np.uint16), VALUE_BITS),
    }
    for width in np.unique(widths):
        arrays[f"gaps_{width}"] = pack_bits(gaps[widths == width], int(width))
    if not derived:
        arrays["seeds"] = seeds
    return arrays


def read_header(arrays: dict[str, np.ndarray]) -> CompactHeader:
    return CompactHeader(**json.loads(bytes(arrays["header"]).decode()))


def decode(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Named byte arrays -> values (n, K) float16, indices (n, K) int16, seeds (n,) int32.

    Rows are in ``canonical_order``.
    """
    header = read_header(arrays)
    if header.format_version != FORMAT_VERSION:
        raise ValueError(f"compact format {header.format_version} is not {FORMAT_VERSION}")
    n, k = header.n_rows, header.k
    widths = unpack_bits(arrays["widths"], WIDTH_BITS, n)
    gaps = np.empty((n, k), np.int64)
    for width in np.unique(widths):
        rows = widths == width
        gaps[rows] = unpack_bits(arrays[f"gaps_{width}"], int(width), int(rows.sum()) * k).reshape(
            -1, k
        )
    indexes = np.cumsum(gaps + 1, axis=1) - 1
    values = unpack_bits(arrays["values"], VALUE_BITS, n * k).astype(np.uint16).view(np.float16)
    values, indexes = canonical_order(values.reshape(n, k), indexes)
    seeds = (
        epoch_seeds(header.run_seed, header.epoch, n)
        if header.seeds_derived
        else np.asarray(arrays["seeds"], np.int32)
    )
    return values, indexes, seeds


def write(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Save encoded arrays as an uncompressed .npz, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
