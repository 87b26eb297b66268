"""What the dataset-level commands share: `torchrun` sharding and resumable chunk files.

`faithfulness`, `baselines`, `lens`, `features` and `eval-saes` call `start_processes(args)`
first (under `torchrun` it joins the process group and picks this rank's GPU), then run their work
inside `dataset_run(...)`: every batched pass over the images is split into chunks, chunk `i` is
computed by rank `i % N`, written to the chunk folder as soon as it is done and gathered by every
rank, and rank 0 alone writes the outputs. A rerun with the same settings reads the finished
chunks back; the chunk files are removed once the outputs are written (unless --keep-chunks).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Options that do not change any number (where to write, how to show it).
_NOT_IN_KEY = {"run", "out", "overwrite", "chunks", "keep_chunks", "debug", "no_progress",
               "device"}


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunks", type=Path, default=None, metavar="DIR",
                   help="folder of finished chunks (one file per batch of images, named by a "
                        "hash of the settings): a rerun with the same settings computes only "
                        "what is missing; default: OUT.chunks next to --out, removed after a "
                        "successful run")
    p.add_argument("--keep-chunks", action="store_true",
                   help="keep the chunk files after a successful run")


def start_processes(args: argparse.Namespace):
    """Join `torchrun`'s process group (if launched by it); `args.device` becomes this rank's."""
    from rrm_plugin.runs.distributed import init_distributed

    ctx = init_distributed(device=args.device)
    args.device = ctx.device
    return ctx


def chunk_folder(args: argparse.Namespace, out: Path) -> Path:
    return args.chunks if args.chunks is not None else Path(f"{out}.chunks")


def baseline_tensors(baselines) -> list[Any]:
    """Every tensor of a `Baselines`, in a fixed order (for the run key)."""
    return [getattr(baselines, kind)[h] for kind in ("features", "errors", "resid")
            for h in sorted(baselines.features)]


@contextmanager
def dataset_run(args: argparse.Namespace, ws, ctx, *, command: str, out: Path, images,
                labels=None, progress: bool = True) -> Iterator[Any]:
    """Shard, store and gather every batched pass inside the block; clean up after success.

    The run's key covers the options, the weights, the images and their `labels` (folder
    names can change the labels of the same image files)."""
    import torch

    from rrm_plugin.provenance import model_fingerprint, sae_fingerprint
    from rrm_plugin.runs.chunks import ChunkStore, run_key
    from rrm_plugin.runs.distributed import barrier, shutdown_distributed
    from rrm_plugin.runs.sharded import ShardedRun, sharded

    try:
        settings = {k: v for k, v in vars(args).items() if k not in _NOT_IN_KEY}
        settings.update(command=command, device_type=torch.device(ws.device).type,
                        model_weights=model_fingerprint(ws.model),
                        saes={h: sae_fingerprint(s) for h, s in ws.saes.items()})
        store = ChunkStore(chunk_folder(args, out))
        tensors = [images] if labels is None else [images, labels]
        run = ShardedRun(ctx=ctx, key=run_key(settings, tensors), store=store,
                         progress=progress)
        with sharded(run):
            yield run
        barrier(ctx)  # every rank's outputs and chunks are complete
        if not args.keep_chunks and ctx.local_rank == 0:
            store.clear(run.keys)
        barrier(ctx)
    finally:
        shutdown_distributed()


def chunk_report(run) -> str:
    """One line for rank 0: chunks computed and read back, over all processes."""
    from rrm_plugin.runs.distributed import all_gather_objects

    counts = all_gather_objects((run.computed, run.reused), run.ctx)
    computed, reused = (sum(c[i] for c in counts) for i in (0, 1))
    where = "" if run.store is None else f" (chunk folder {run.store.folder})"
    return (f"{run.ctx.world_size} process(es): {computed} chunks computed, {reused} read back "
            f"from an earlier run{where}")
