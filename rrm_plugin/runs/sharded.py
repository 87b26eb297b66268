"""Batched passes over a dataset, sharded across processes, stored per chunk, gathered in order.

Library functions that loop over images in batches call `map_batches(fn, n=..., batch_size=...)`
instead of a Python loop. Outside a run it is that loop. Inside `with sharded(run):` (the CLI's
dataset commands) the batches are chunks: chunk `i` is computed by rank `i % world_size`, or read
back from the run's `ChunkStore` when an earlier run finished it, saved as soon as it is done,
and the chunks of all ranks are gathered so that every rank gets the same ordered list. The
callers' aggregation (concatenation, medians, running sums in chunk order) then sees exactly what a
single process sees, so the final numbers are equal whatever the number of processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rrm_plugin.errors import RRMUserError
from rrm_plugin.runs.chunks import ChunkStore, extend_key
from rrm_plugin.runs.distributed import Distributed, all_gather_objects

logger = logging.getLogger(__name__)
BatchResult = dict[str, Tensor]
_ACTIVE: ContextVar[ShardedRun | None] = ContextVar("rrm_sharded_run", default=None)


@dataclass
class ShardedRun:
    """One command's dataset run.

    Args:
        ctx: This process's rank and world size (`init_distributed`).
        key: Hash of everything the results depend on (`chunks.run_key`).
        store: Where finished chunks are kept (None: nothing is stored, nothing resumed).
        progress: Show progress bars (on rank 0 only).
    """

    ctx: Distributed
    key: str
    store: ChunkStore | None = None
    progress: bool = True
    computed: int = 0
    reused: int = 0
    keys: list[str] = field(default_factory=list)
    _phase: int = 0

    def __post_init__(self) -> None:
        self.keys.append(self.key)

    def extend_key(self, tensors) -> None:
        """Later passes also depend on `tensors` (e.g. baselines resolved inside the run)."""
        self.key = extend_key(self.key, tensors)
        self.keys.append(self.key)

    def map(self, fn: Callable[[slice], BatchResult], *, n: int, batch_size: int, name: str,
            progress: bool = True) -> list[BatchResult]:
        phase = f"{self._phase:03d}-{name}"
        self._phase += 1
        spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        mine = range(self.ctx.rank, len(spans), self.ctx.world_size)
        done: dict[int, BatchResult] = {}
        show = progress and self.progress and self.ctx.is_main
        for i in tqdm(mine, desc=name, disable=not show, leave=False):
            start, stop = spans[i]
            where = dict(key=self.key, phase=phase, start=start, stop=stop)
            found = None if self.store is None else self.store.load(**where)
            if found is None:
                found = _cpu(fn(slice(start, stop)), name)
                if self.store is not None:
                    self.store.save(found, **where)
                self.computed += 1
            else:
                self.reused += 1
            done[i] = found
        merged: dict[int, BatchResult] = {}
        for part in all_gather_objects(done, self.ctx):
            merged.update(part)
        logger.debug("%s: %d chunks", phase, len(spans))
        return [merged[i] for i in range(len(spans))]


def _cpu(result: BatchResult, name: str) -> BatchResult:
    if not isinstance(result, dict) or not all(isinstance(v, Tensor) for v in result.values()):
        raise TypeError(f"{name}: a batch must give a dict of tensors, got {type(result)}")
    return {k: v.detach().cpu() for k, v in result.items()}


@contextmanager
def sharded(run: ShardedRun) -> Iterator[ShardedRun]:
    """Make `map_batches` inside the block shard, store and gather through `run`."""
    token = _ACTIVE.set(run)
    try:
        yield run
    finally:
        _ACTIVE.reset(token)


def active_run() -> ShardedRun | None:
    return _ACTIVE.get()


def map_batches(fn: Callable[[slice], BatchResult], *, n: int, batch_size: int, name: str,
                progress: bool = True) -> list[BatchResult]:
    """`[fn(slice(s, s + batch_size)) for s in range(0, n, batch_size)]`, sharded in a run."""
    if batch_size < 1:
        raise RRMUserError(f"batch_size must be at least 1, got {batch_size}")
    run = _ACTIVE.get()
    if run is not None:
        return run.map(fn, n=n, batch_size=batch_size, name=name, progress=progress)
    starts = range(0, n, batch_size)
    return [fn(slice(s, min(s + batch_size, n)))
            for s in tqdm(starts, desc=name, disable=not progress, leave=False)]


def concat(parts: list[BatchResult], key: str, *, dim: int = 0) -> Tensor:
    """One entry of every batch, concatenated along `dim`."""
    return torch.cat([p[key] for p in parts], dim=dim)
