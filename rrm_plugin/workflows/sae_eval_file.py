"""`rrm eval-saes`: SAELens-named metrics of an SAE release per layer and for the whole
replacement model over an image set, into a JSON file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rrm_plugin.io import write_json
from rrm_plugin.metrics.sae_evaluation import evaluate_saes
from rrm_plugin.metrics.sae_sanity import release_warnings
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
from rrm_plugin.workflows.inputs import dataset_images
from rrm_plugin.workflows.workspace import Workspace, load_workspace


@dataclass(frozen=True, kw_only=True)
class SAEEvalOptions(DatasetInputs):
    """Every setting of an SAE evaluation, named as `rrm eval-saes`'s options (`images`
    default: the embedded model's held-out set)."""

    batch_size: int = 64


class SAEEvalRun(NamedTuple):
    """What an evaluation gives every process (the file is written by the main one)."""

    metrics: dict[str, dict[str, float]]
    model_name: str
    release: str | None
    n_images: int
    predicted_labels: bool  # unlabelled images: the model's predictions stand in for labels
    warnings: list[str]     # SAEs explaining far less variance than their release documents
    counts: ChunkCounts
    is_main: bool


def normalisation_warnings(ws: Workspace, results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """SAEs explaining far less variance than their release documents (a wrong normalisation)."""
    measured = {hook: row["explained_variance"] for hook, row in results.items()
                if hook in ws.saes and "explained_variance" in row}
    return release_warnings(ws.release, ws.saes, measured)


def evaluate_saes_to_file(out: str | Path = "sae_eval.json", *,
                          options: SAEEvalOptions | None = None, device: str = "cpu",
                          chunks: Path | None = None, keep_chunks: bool = False,
                          progress: bool = True) -> SAEEvalRun:
    """Load the workspace and the images, run `evaluate_saes` sharded over `torchrun`'s
    processes (resumable from `chunks`), and write `out` (checked before any work) on the main
    process: `{"model", "release", "n_images", "metrics"}`."""
    options = options if options is not None else SAEEvalOptions()
    out = Path(out)
    check_chunk_folder(chunks, None)
    check_out_file(out, inputs=existing_inputs(options.images, options.model, options.release))
    ctx = start_processes(device)
    ws = load_workspace(model=options.model, release=options.release, device=ctx.device,
                        dtype=options.dtype)
    loaded = dataset_images(options.images, ws.model)
    with dataset_run(settings_of(options), ws, ctx, command="eval-saes", out=out,
                     images=loaded.images, labels=loaded.labels,
                     chunks=chunks, keep_chunks=keep_chunks) as run:
        results = evaluate_saes(ws.model, ws.saes, loaded.images, loaded.labels,
                                batch_size=options.batch_size, progress=progress and ctx.is_main)
        counts = chunk_counts(run)
        warnings: list[str] = []
        if ctx.is_main:
            warnings = normalisation_warnings(ws, results)
            write_json(out, {"model": ws.model_name, "release": ws.release,
                             "n_images": len(loaded.images), "metrics": results})
    return SAEEvalRun(results, ws.model_name, ws.release, len(loaded.images),
                      loaded.labels is None, warnings, counts, ctx.is_main)
