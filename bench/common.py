"""Timing, reference matmuls, operation counts and machine description shared by the benchmarks.

The machine is shared and noisy, so every speed is reported next to a dense
matmul of the same precision timed in the same run: the ratio
(achieved GFLOP/s) / (matmul GFLOP/s) moves much less than the raw latency.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hear_ced.fast import cpu_features

logger = logging.getLogger(__name__)

# Large enough to reach the GEMM kernels' peak, small enough to time in a few rounds.
MATMUL_SIZE = 1024
# A cell whose same-run matmul reaches less than this fraction of the run's best
# matmul of the same precision and thread count was disturbed by other jobs.
DISTURBED_BELOW = 0.8
# Measurements of a disturbed cell (the first included) before it is marked invalid.
MAX_ATTEMPTS = 3
MATMUL_PREFIX = "matmul:"


@dataclass(frozen=True)
class Timing:
    """The seconds of each timed round of one callable."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, restoring the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def interleaved(
    fns: dict[str, Callable[[], object]], budget_s: float = 2.0, max_rounds: int = 15
) -> dict[str, Timing]:
    """Median time of each callable, timed round-robin so all see the same machine load.

    One warm-up round, then at least 3 rounds, more while the budget lasts
    (counted over the timed rounds, so a slow first call does not cut them short).
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or (rounds < max_rounds and time.perf_counter() - start < budget_s):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: Timing(tuple(t)) for name, t in times.items()}


def calls_per_second(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Calls of ``fn`` per second after one warm-up call, waiting for the device."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return calls / (time.perf_counter() - start)


def paired_ratio(slow: Timing, fast: Timing) -> float:
    """Median over rounds of slow/fast time: robust to load that changes between rounds."""
    return statistics.median(a / b for a, b in zip(slow.times, fast.times, strict=True))


def matmul_fn(dtype: torch.dtype) -> Callable[[], object]:
    """One square matmul of ``dtype`` (2 n^3 operations), for a same-run reference.

    For ``torch.int8`` it is the GEMM the ``int8`` mode runs: a dynamically
    quantised Linear (per-channel int8 weights, the activations quantised per
    call), whose library kernel uses whatever int8 dot products the CPU has
    (``torch._int_mm`` has no fast CPU kernel without VNNI).
    """
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, MATMUL_SIZE, MATMUL_SIZE, generator=gen)
    if dtype == torch.int8:
        linear = nn.Linear(MATMUL_SIZE, MATMUL_SIZE, bias=False)
        linear.weight.data = b
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch marks eager quantisation deprecated
            qconfig = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
            quantised = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), qconfig)
        return lambda: quantised(a)
    a, b = a.to(dtype), b.to(dtype)
    return lambda: a @ b


def count_macs(fn: Callable, *args) -> int:
    """Multiply-accumulates of one call (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        fn(*args)
    return counter.get_total_flops() // 2


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reference_gflops(timings: dict[str, Timing]) -> dict[str, float]:
    """GFLOP/s of each ``matmul:<precision>`` entry of a cell's timings."""
    return {
        key.removeprefix(MATMUL_PREFIX): 2 * MATMUL_SIZE**3 / t.median / 1e9
        for key, t in timings.items()
        if key.startswith(MATMUL_PREFIX)
    }


@dataclass
class Cell:
    """One table cell: its latest accepted timings and how trustworthy they are."""

    group: Hashable
    measure: Callable[[], dict[str, Timing]]
    timings: dict[str, Timing]
    attempts: int = 1
    valid: bool = True
    best: dict[str, float] = field(default_factory=dict)

    @property
    def references(self) -> dict[str, float]:
        """GFLOP/s of the cell's same-run matmuls, per precision."""
        return reference_gflops(self.timings)

    def report(self) -> dict:
        """What results.json records about the cell's trustworthiness."""
        return {
            "attempts": self.attempts,
            "valid": self.valid,
            "matmul_gflops": self.references,
            "run_best_matmul_gflops": self.best,
        }


class InterferenceGuard:
    """Measures cells again while their matmul reference shows other jobs' load.

    Every cell's timings carry ``matmul:<precision>`` entries timed in the same
    rounds. A cell is *disturbed* when one of them reaches less than
    ``DISTURBED_BELOW`` of the best rate of that precision in its group (same thread
    count) over the whole run. ``finish`` measures disturbed cells again, up to
    ``attempts`` measurements in all, keeping the least disturbed one, and
    marks those that stay disturbed invalid: reports leave them out.
    """

    def __init__(self, attempts: int = MAX_ATTEMPTS) -> None:
        self.attempts = attempts
        self.cells: dict[Hashable, Cell] = {}

    def measure(
        self, key: Hashable, group: Hashable, measure: Callable[[], dict[str, Timing]]
    ) -> None:
        """Time a cell now (``measure`` is kept to measure it again in ``finish``)."""
        self.cells[key] = Cell(group, measure, measure())

    def best(self) -> dict[Hashable, dict[str, float]]:
        """The run's best matmul rate per group and precision."""
        best: dict[Hashable, dict[str, float]] = {}
        for cell in self.cells.values():
            group = best.setdefault(cell.group, {})
            for precision, rate in cell.references.items():
                group[precision] = max(rate, group.get(precision, 0.0))
        return best

    @staticmethod
    def _worst_fraction(references: dict[str, float], best: dict[str, float]) -> float:
        return min((r / best[p] for p, r in references.items()), default=1.0)

    def finish(self) -> dict[Hashable, Cell]:
        """Re-measure disturbed cells, then mark the ones still disturbed invalid."""
        for _ in range(self.attempts - 1):
            best = self.best()
            disturbed = [
                (key, cell)
                for key, cell in self.cells.items()
                if self._worst_fraction(cell.references, best[cell.group]) < DISTURBED_BELOW
            ]
            if not disturbed:
                break
            for key, cell in disturbed:
                logger.info("measuring %s again: its matmul reference shows interference", key)
                timings = cell.measure()
                cell.attempts += 1
                group = best[cell.group]
                retry = self._worst_fraction(reference_gflops(timings), group)
                if retry > self._worst_fraction(cell.references, group):
                    cell.timings = timings
        best = self.best()
        for cell in self.cells.values():
            cell.best = best[cell.group]
            cell.valid = self._worst_fraction(cell.references, cell.best) >= DISTURBED_BELOW
        return self.cells


# torch's and oneDNN's switches that make a newer CPU run the kernels of an older class.
EMULATION_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cpu_class(flags: frozenset[str] | set[str], capability: str, onednn_isa: str = "") -> str:
    """The CPU class a headline is kept under: what the kernels torch runs can use.

    ``capability`` is torch's (lowered by ``ATEN_CPU_CAPABILITY``) and
    ``onednn_isa`` oneDNN's limit (``ONEDNN_MAX_CPU_ISA``): an emulated class is
    named by what the kernels were limited to, not by the hardware.
    """
    if capability.startswith("AVX512"):
        if flags & {"amx_bf16", "amx_int8"}:
            return "AMX"
        if flags & {"avx512_bf16", "avx512_vnni"}:
            return "AVX512 with BF16/VNNI"
        return "AVX512"
    if capability == "AVX2":
        vnni = "avx_vnni" in flags and (not onednn_isa or "VNNI" in onednn_isa.upper())
        return "AVX2 with VNNI" if vnni else "AVX2 without VNNI"
    return "other"


def machine_description() -> dict:
    """CPU model and the flags that matter for inference (as ``fast="auto"`` reads them),
    cores, memory, torch build, and the CPU class (emulated, if a variable lowers it)."""
    cpu = cpu_features()
    emulation = {k: os.environ[k] for k in EMULATION_VARIABLES if os.environ.get(k)}
    info = {
        "cpu_class": cpu_class(cpu.flags, cpu.capability, emulation.get("ONEDNN_MAX_CPU_ISA", ""))
        + (" (emulated)" if emulation else ""),
        "emulation": emulation,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": cpu.capability,
        "cpu_model": cpu.model or platform.processor(),
        "cpu_flags": sorted(cpu.flags),
        "nproc": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/meminfo") as handle:
            info["mem_total_gb"] = round(int(handle.readline().split()[1]) / 2**20, 1)
    except OSError:
        info["mem_total_gb"] = None
    with contextlib.suppress(OSError):
        info["load_avg_at_start"] = os.getloadavg()
    return info
