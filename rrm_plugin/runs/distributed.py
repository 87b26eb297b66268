"""Processes of a `torchrun` launch: rank, world size, device, and gathering Python objects.

Every dataset-level command calls `init_distributed` first. Without torchrun's environment
(`WORLD_SIZE` unset or 1) it is a single process and nothing is initialised. Under
`torchrun --nproc-per-node N` (any number of nodes, by torchrun's own flags) it joins the
default process group: NCCL for CUDA devices, gloo on CPU. Results travel as pickled CPU objects
over a gloo group in both cases, so gathering works the same on every backend.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class Distributed(NamedTuple):
    """This process's place in the launch."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    """The device this process computes on (`cuda` becomes `cuda:<local rank>`)."""
    group: Any = None
    """gloo group for object collectives (None: single process)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_OWN_GROUP = False  # whether init_distributed created the default group (and may destroy it)
_GLOO: Any = None


def launched_world_size() -> int:
    """Processes of the torchrun launch this process belongs to (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(*, device: str = "cpu") -> Distributed:
    """Join torchrun's process group if launched by it; else describe a single process."""
    global _OWN_GROUP, _GLOO
    world = launched_world_size()
    if world <= 1:
        return Distributed(0, 1, 0, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" or device.startswith("cuda"):
        if device == "cuda":
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        _OWN_GROUP = True
        logger.info("joined process group: rank %d of %d", dist.get_rank(), world)
    if _GLOO is None:
        _GLOO = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device, _GLOO)


def shutdown_distributed() -> None:
    """Leave the process group if `init_distributed` created it."""
    global _OWN_GROUP, _GLOO
    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP, _GLOO = False, None


def all_gather_objects(obj: Any, ctx: Distributed) -> list[Any]:
    """`obj` of every rank, in rank order (just `[obj]` for a single process)."""
    if ctx.world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj, group=ctx.group)
    return gathered


def barrier(ctx: Distributed) -> None:
    if ctx.world_size > 1:
        dist.barrier(group=ctx.group)
