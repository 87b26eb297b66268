"""`rrm baselines`: the per-position median (or mean) baselines of an SAE release over an image
set, into a baselines file (default: the user cache, where `resolve_baselines` finds it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rrm_plugin.attribution.baselines import Baselines, compute_baselines
from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import check_not_shipped
from rrm_plugin.runs.output import check_chunk_folder, check_out_file
from rrm_plugin.workflows.dataset_run import (
    ChunkCounts,
    DatasetInputs,
    chunk_counts,
    dataset_run,
    existing_inputs,
    settings_of,
    start_processes,
)
from rrm_plugin.workflows.inputs import reference_renders
from rrm_plugin.workflows.workspace import load_workspace
from rrm_plugin.zoo.baselines import cached_baselines_path


@dataclass(frozen=True, kw_only=True)
class BaselinesOptions(DatasetInputs):
    """Every setting of a baselines run, named as `rrm baselines`'s options: the `statistic`
    over `images`, else over `n_images` fresh renders (seed `seed`) of the embedded model's
    training data."""

    statistic: str = "median"
    n_images: int = 2048
    seed: int = 4321
    batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.release is None or self.release.lower() == "none":
            raise RRMUserError("--release none: baselines need an SAE release")
        if self.statistic not in ("median", "mean"):  # as compute_baselines, before loading
            raise RRMUserError(f"unknown baseline statistic {self.statistic!r}; expected "
                               "'median' or 'mean'")


class BaselinesRun(NamedTuple):
    """What a baselines run gives every process (the file is written by the main one)."""

    baselines: Baselines
    path: Path
    release: str
    over: str               # what the statistic was taken over, one line
    counts: ChunkCounts
    is_main: bool


def baselines_to_file(out: str | Path | None = None, *,
                      options: BaselinesOptions | None = None, device: str = "cpu",
                      chunks: Path | None = None, keep_chunks: bool = False,
                      progress: bool = True) -> BaselinesRun:
    """Load the workspace and the images, compute the baselines sharded over `torchrun`'s
    processes (resumable from `chunks`), and save them to `out` (None: the release's user
    cache file, `zoo.baselines.cached_baselines_path`) on the main process."""
    options = options if options is not None else BaselinesOptions()
    check_chunk_folder(chunks, None)
    if out is not None:
        check_out_file(Path(out), inputs=existing_inputs(options.images, options.model,
                                                         options.release))
    ctx = start_processes(device)
    ws = load_workspace(model=options.model, release=options.release, device=ctx.device,
                        dtype=options.dtype)
    images, over = reference_renders(options.images, ws.model, n_images=options.n_images,
                                     seed=options.seed)
    path = Path(out) if out is not None else cached_baselines_path(ws.release)
    check_not_shipped(path)  # before the work, not after
    with dataset_run(settings_of(options), ws, ctx, command="baselines", out=path,
                     images=images,
                     chunks=chunks, keep_chunks=keep_chunks) as run:
        # Gathered per image from every process, then one median: exactly one process's result.
        baselines = compute_baselines(ws.model, ws.saes, images, statistic=options.statistic,
                                      batch_size=options.batch_size,
                                      progress=ctx.is_main and progress)
        counts = chunk_counts(run)
        if ctx.is_main:
            baselines.save(path)
    return BaselinesRun(baselines, path, ws.release, over, counts, ctx.is_main)
