"""`rrm features`: dashboards of every feature of an SAE release over an image set (top images
with heat maps, densities, histograms, feature lens, circuit participation; with `types`, the
measured feature types), into an output folder written as a unit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sae_lens import SAE

from rrm_plugin.errors import RRMUserError
from rrm_plugin.features.dashboard import FeatureDashboards, build_dashboards, write_dashboards
from rrm_plugin.features.types import FeatureTypes, feature_types
from rrm_plugin.features.types_report import write_types
from rrm_plugin.runs.output import check_chunk_folder, check_output_directory, output_directory
from rrm_plugin.workflows.baselines import resolve_baselines
from rrm_plugin.workflows.dataset_run import (
    ChunkCounts,
    DatasetInputs,
    baseline_tensors,
    chunk_counts,
    dataset_run,
    existing_inputs,
    settings_of,
    start_processes,
)
from rrm_plugin.workflows.inputs import dataset_images
from rrm_plugin.workflows.workspace import load_workspace
from rrm_plugin.zoo.inputs import class_names_of


@dataclass(frozen=True, kw_only=True)
class FeaturesOptions(DatasetInputs):
    """Every setting of a features run, named as `rrm features`'s options: `layers` (0-based
    positions in the release, consecutive; None: all), `k` top images per feature,
    `n_circuit_images` (None: all images; 0 skips circuits), `types` (feature types from
    generated stimuli, digits-canvas models only), `baselines` (see `resolve_baselines`)."""

    baselines: Path | str | None = None
    layers: list[int] | None = None
    k: int = 8
    n_circuit_images: int | None = None
    types: bool = False
    batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.release is None or self.release.lower() == "none":
            raise RRMUserError("rrm features needs an SAE release: give --release NAME or FOLDER")


class FeaturesRun(NamedTuple):
    """What a features run gives every process; `types` and `files` (paths under `out`) only on
    the main one (types are measured there alone)."""

    dashboards: FeatureDashboards
    types: FeatureTypes | None
    baselines: str | None   # where the baselines came from (None: no circuits)
    files: list[Path]
    counts: ChunkCounts
    is_main: bool


def select_layers(saes: Mapping[str, SAE], layers: list[int] | None) -> dict[str, SAE]:
    """The SAEs at positions `layers` of the release (consecutive: circuits join adjacent
    layers); all of them for None."""
    hooks = list(saes)
    if layers is None:
        return dict(saes)
    bad = [k for k in layers if not 0 <= k < len(hooks)]
    if bad:
        raise RRMUserError(
            f"--layers {bad} out of range: the release has layers 0..{len(hooks) - 1}"
            f" ({', '.join(hooks)})")
    chosen = sorted(set(layers))
    if chosen != list(range(chosen[0], chosen[-1] + 1)):
        raise RRMUserError(f"--layers {chosen} must be consecutive (circuits join adjacent layers)")
    return {hooks[k]: saes[hooks[k]] for k in chosen}


def features_to_folder(out: str | Path, *, options: FeaturesOptions | None = None,
                       device: str = "cpu", chunks: Path | None = None,
                       keep_chunks: bool = False, overwrite: bool = False,
                       progress: bool = True) -> FeaturesRun:
    """Load the workspace and the images (default: the embedded model's held-out set), build
    the dashboards sharded over `torchrun`'s processes (resumable from `chunks`), measure the
    feature types (main process), and write `out` (checked before any work) there."""
    options = options if options is not None else FeaturesOptions()
    out = Path(out)
    check_chunk_folder(chunks, out)
    check_output_directory(out, command="features", overwrite=overwrite,
                           inputs=existing_inputs(options.images, options.baselines,
                                                  options.model, options.release, chunks))
    ctx = start_processes(device)
    ws = load_workspace(model=options.model, release=options.release, device=ctx.device,
                        dtype=options.dtype)
    if not ws.saes:
        raise RRMUserError("rrm features needs an SAE release: give --release NAME or FOLDER")
    saes = select_layers(ws.saes, options.layers)
    loaded = dataset_images(options.images, ws.model)
    progress = progress and ctx.is_main
    with dataset_run(settings_of(options), ws, ctx, command="features", out=out,
                     images=loaded.images,
                     chunks=chunks, keep_chunks=keep_chunks, progress=progress) as run:
        baselines = what = None
        if options.n_circuit_images != 0:
            baselines, what, _ = resolve_baselines(ws.model, saes, images=loaded.images,
                                                path=options.baselines, release=ws.release)
            run.extend_key(baseline_tensors(baselines))
        dash = build_dashboards(
            ws.model, saes, loaded.images, model_name=ws.model_name, release=str(ws.release),
            class_names=class_names_of(ws.model), baselines=baselines,
            n_circuit_images=options.n_circuit_images or None, k=options.k,
            batch_size=options.batch_size, files=[str(f) for f in loaded.files] or None,
            progress=progress, layer_ids=[list(ws.saes).index(h) for h in saes],
        )
        counts = chunk_counts(run)
        types, files = None, []
        if ctx.is_main:
            if options.types:  # generated stimuli, not the image set: the main process alone
                types = feature_types(ws.model, saes, progress=progress)
                dash.types = {h: r.types for h, r in types.layers.items()}
            with output_directory(out, command="features", overwrite=overwrite) as tmp:
                written = write_dashboards(dash, tmp, progress=progress)
                if types is not None:
                    written += write_types(types, tmp)
            files = [out / Path(p).relative_to(tmp) for p in written]
    return FeaturesRun(dash, types, what, files, counts, ctx.is_main)
