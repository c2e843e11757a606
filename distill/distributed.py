"""Process and device set-up for ``save-logits`` and ``train`` under torchrun.

Each torchrun process owns one GPU, the one numbered by its ``LOCAL_RANK``
(nccl between them); on CPU the processes talk over gloo. A launch with more
processes per node than visible GPUs is refused by every process at start-up,
before any work or any collective call that would hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hear_ced.device import torch_device


class DistributedSetupError(ValueError):
    """The launch does not fit the machine (e.g. more ranks than GPUs)."""


def device_for_rank(requested: str, local_rank: int, local_world: int) -> torch.device:
    """The device of process ``local_rank`` of ``local_world`` on this node.

    ``requested`` is what ``hear_ced.device.torch_device`` reads. With
    several processes, process ``r`` gets ``cuda:r``, so no two processes
    share a GPU; an explicit ``cuda:N`` is only accepted for a single process.
    """
    device = torch_device(requested)
    if device.type != "cuda":
        return device
    if local_world == 1:
        return torch.device("cuda", device.index or 0)
    if device.index is not None:
        raise DistributedSetupError(
            f"device {requested!r} names one GPU for {local_world} processes; use 'cuda' "
            "so that each process takes the GPU of its LOCAL_RANK"
        )
    n_gpus = torch.cuda.device_count()
    if local_world > n_gpus:
        raise DistributedSetupError(
            f"torchrun started {local_world} processes on this node but only {n_gpus} GPU(s) "
            f"are visible; use --nproc-per-node={n_gpus} or fewer"
        )
    return torch.device("cuda", local_rank)


@dataclass(frozen=True)
class Context:
    """This process's place in the run and its device."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """End the process group if this context started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(requested: str) -> Context:
    """One process, or one of several under torchrun, bound to its own device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = device_for_rank(requested, local_rank, local_world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world == 1:
        return Context(0, 1, device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Context(dist.get_rank(), dist.get_world_size(), device, owns)
