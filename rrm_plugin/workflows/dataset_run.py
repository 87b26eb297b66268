"""What the dataset-level workflows share: `torchrun` sharding and resumable chunk files.

`faithfulness_to_folder`, `baselines_to_file`, `lens_to_folder`, `features_to_folder` and
`evaluate_saes_to_file` call `start_processes(device)` first (under `torchrun` it joins the process
group and picks this rank's GPU), then run their work inside `dataset_run(...)`: every batched
pass over the images is split into chunks, chunk `i` is computed by rank `i % N`, written to the
chunk folder as soon as it is done and gathered by every rank, and rank 0 alone writes the
outputs. A rerun with the same settings reads the finished chunks back; the chunk files are
removed once the outputs are written (unless `keep_chunks`).

The run's key hashes the settings (a workflow's options dataclass: every field changes a number),
the command, the device type, the model and SAE weights, the images and their labels; passes that
depend on what is resolved later (baselines) extend it (`ShardedRun.extend_key`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.errors import RRMUserError
from rrm_plugin.provenance import model_fingerprint, sae_fingerprint
from rrm_plugin.runs.chunks import ChunkStore, run_key
from rrm_plugin.runs.distributed import (
    Distributed,
    all_gather_objects,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from rrm_plugin.runs.sharded import ShardedRun, sharded
from rrm_plugin.workflows.workspace import Workspace


@dataclass(frozen=True, kw_only=True)
class DatasetInputs:
    """What every dataset workflow reads, as the `rrm` options name it (`--model`, `--release`,
    `--dtype`, `--images`). `threads` is not set by the library (the caller's
    `torch.set_num_threads`, `rrm --threads`); it is recorded in the run key because the thread
    count can change float sums."""

    model: str | None = None
    release: str | None = "rrm-digits-vit"
    dtype: str | None = None
    images: list[str] | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.images, str | Path):  # one path would be read letter by letter
            raise RRMUserError(f"images={self.images!r}: give a list of files or folders, "
                               f"e.g. images=[{str(self.images)!r}]")


def settings_of(options: Any) -> dict[str, Any]:
    """The run key's settings: every field of a workflow's options dataclass."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def start_processes(device: str) -> Distributed:
    """Join `torchrun`'s process group (if launched by it); `.device` is this rank's device."""
    return init_distributed(device=device)


def chunk_folder(chunks: Path | None, out: Path) -> Path:
    return Path(chunks) if chunks is not None else Path(f"{out}.chunks")


def existing_inputs(*values: Any) -> list[str]:
    """The existing paths among option values (str, Path, lists of them, None): the inputs an
    output folder must not hold, since it is replaced as a whole."""
    found = []
    for value in values:
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and Path(v).exists():
                found.append(str(v))
    return found


def baseline_tensors(baselines: Baselines) -> list[Tensor]:
    """Every tensor of a `Baselines`, in a fixed order (for the run key)."""
    return [getattr(baselines, kind)[h] for kind in ("features", "errors", "resid")
            for h in sorted(baselines.features)]


@contextmanager
def dataset_run(settings: Mapping[str, Any], ws: Workspace, ctx: Distributed, *, command: str,
                out: Path, images: Tensor, labels: Tensor | None = None,
                chunks: Path | None = None, keep_chunks: bool = False,
                progress: bool = True) -> Iterator[ShardedRun]:
    """Shard, store and gather every batched pass inside the block; clean up after success.

    `chunks`: the folder of finished chunks (default `OUT.chunks` next to `out`), removed after
    success unless `keep_chunks`; neither is part of the key. The key covers `settings`, the
    weights, the images and their `labels` (folder names can change the labels of the same
    image files)."""
    try:
        key_settings = {**settings, "command": command,
                        "device_type": torch.device(ws.device).type,
                        "model_weights": model_fingerprint(ws.model),
                        "saes": {h: sae_fingerprint(s) for h, s in ws.saes.items()}}
        store = ChunkStore(chunk_folder(chunks, out))
        tensors = [images] if labels is None else [images, labels]
        run = ShardedRun(ctx=ctx, key=run_key(key_settings, tensors), store=store,
                         progress=progress)
        with sharded(run):
            yield run
        barrier(ctx)  # every rank's outputs and chunks are complete
        if not keep_chunks and ctx.local_rank == 0:
            store.clear(run.keys)
        barrier(ctx)
    finally:
        shutdown_distributed()


@dataclass(frozen=True)
class ChunkCounts:
    """Chunks computed and read back, over all processes (one line: `str()`)."""

    world_size: int
    computed: int
    reused: int
    folder: Path | None

    def __str__(self) -> str:
        where = "" if self.folder is None else f" (chunk folder {self.folder})"
        return (f"{self.world_size} process(es): {self.computed} chunks computed, {self.reused} "
                f"read back from an earlier run{where}")


def chunk_counts(run: ShardedRun) -> ChunkCounts:
    """Every rank calls this (it gathers); the counts are the same on each."""
    counts = all_gather_objects((run.computed, run.reused), run.ctx)
    computed, reused = (sum(c[i] for c in counts) for i in (0, 1))
    return ChunkCounts(run.ctx.world_size, computed, reused,
                       None if run.store is None else run.store.folder)
