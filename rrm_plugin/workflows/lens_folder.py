"""`rrm lens`: the class-embedding-space analysis (Vilas et al. 2023) of a model's tokens and SAE
features over an image set, into an output folder written as a unit (`lens.json`,
`lens_tensors.safetensors`, the plots)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.lens.report import LensConfig, LensResults, run_lens
from rrm_plugin.lens.report_output import write_lens_report
from rrm_plugin.runs.output import check_chunk_folder, check_output_directory, output_directory
from rrm_plugin.workflows.dataset_run import (
    ChunkCounts,
    DatasetInputs,
    chunk_counts,
    dataset_run,
    existing_inputs,
    settings_of,
    start_processes,
)
from rrm_plugin.workflows.inputs import dataset_images, predicted_labels
from rrm_plugin.workflows.workspace import Workspace, load_workspace
from rrm_plugin.zoo.datasets import load_test_set, training_sampler
from rrm_plugin.zoo.models import MODELS


@dataclass(frozen=True, kw_only=True)
class LensOptions(DatasetInputs):
    """Every setting of a lens run, named as `rrm lens`'s options (`release` None or "none": the
    tokens only). `images` default: the embedded model's held-out set (with object masks);
    `probe_images` (labelled class folders) default: `n_probe_images` fresh renders of the
    embedded model's training data, none for other models."""

    n_images: int | None = None
    probe_images: list[str] | None = None
    n_probe_images: int = 2000
    blocks: list[int] | None = None
    permutations: int = 1000
    random_repeats: int = 3
    random_shared_seeds: int = 10
    batch_size: int = 128
    seed: int = 0

    def config(self, *, progress: bool) -> LensConfig:
        return LensConfig(batch_size=self.batch_size, n_permutations=self.permutations,
                          random_repeats=self.random_repeats,
                          random_shared_seeds=self.random_shared_seeds, seed=self.seed,
                          progress=progress,
                          map_blocks=None if self.blocks is None else tuple(self.blocks))


class LensInputs(NamedTuple):
    images: Tensor
    labels: Tensor
    object_mask: Tensor | None
    probe_images: Tensor | None
    probe_labels: Tensor | None
    predicted_labels: bool  # unlabelled images: the model's predictions stand in


class LensRun(NamedTuple):
    """What a lens run gives every process; `files` (paths under `out`) only on the main one."""

    results: LensResults
    predicted_labels: bool
    files: list[Path]
    counts: ChunkCounts
    is_main: bool


def lens_inputs(options: LensOptions, ws: Workspace) -> LensInputs:
    """Images, labels and object masks (embedded held-out set only), and the probe set."""
    dtype = next(ws.model.parameters()).dtype
    mask, predicted = None, False
    if options.images:
        loaded = dataset_images(options.images, ws.model)
        images, labels = loaded.images, loaded.labels
        if labels is None:
            labels = predicted_labels(ws.model, images, batch_size=options.batch_size)
            predicted = True
    elif ws.model_name in MODELS:
        test = load_test_set(ws.model_name)
        images, labels, mask = test.images, test.labels, test.object_mask
        images, labels = images.to(ws.device, dtype), labels.to(ws.device)
    else:
        raise RRMUserError(f"model {ws.model_name!r} has no embedded images: give --images")
    n = len(labels) if options.n_images is None else options.n_images
    if not 1 <= n <= len(labels):
        raise RRMUserError(f"--n-images must be in [1, {len(labels)}], got {n}")
    images, labels = images[:n], labels[:n]
    mask = None if mask is None else mask[:n].to(ws.device)
    probe_images = probe_labels = None
    if options.probe_images:
        probes = dataset_images(options.probe_images, ws.model)
        if probes.labels is None:
            raise RRMUserError("--probe-images need labels: give an ImageFolder tree "
                               "(one folder per class)")
        probe_images, probe_labels = probes.images, probes.labels
    elif ws.model_name in MODELS and options.n_probe_images > 0:
        # Probes train on fresh renders of the training digits, never on the held-out images.
        train = training_sampler(ws.model_name, seed=options.seed + 1)(options.n_probe_images)
        probe_images = train.images.to(ws.device, dtype)
        probe_labels = train.labels.to(ws.device)
    return LensInputs(images, labels, mask, probe_images, probe_labels, predicted)


def lens_to_folder(out: str | Path, *, options: LensOptions | None = None,
                   device: str = "cpu", chunks: Path | None = None,
                   keep_chunks: bool = False, overwrite: bool = False,
                   progress: bool = True) -> LensRun:
    """Load the workspace and the images, run `run_lens` (with a control model of the same
    architecture, seeded by `options.seed`) sharded over `torchrun`'s processes (resumable from
    `chunks`), and write `out` (checked before any work) on the main process."""
    options = options if options is not None else LensOptions()
    out = Path(out)
    check_chunk_folder(chunks, out)
    check_output_directory(out, command="lens", overwrite=overwrite,
                           inputs=existing_inputs(options.images, options.probe_images,
                                                  options.model, options.release, chunks))
    no_saes = options.release is not None and options.release.lower() == "none"
    ctx = start_processes(device)
    ws = load_workspace(model=options.model, release=options.release, device=ctx.device,
                        dtype=options.dtype, with_saes=not no_saes)
    inputs = lens_inputs(options, ws)
    control = build_hooked_vit(ws.model.cfg, seed=options.seed).to(
        device=ws.device, dtype=next(ws.model.parameters()).dtype).eval()
    config = options.config(progress=progress and ctx.is_main)
    with dataset_run(settings_of(options), ws, ctx, command="lens", out=out,
                     images=inputs.images,
                     chunks=chunks, keep_chunks=keep_chunks, progress=config.progress) as run:
        run.extend_key([t for t in (inputs.labels, inputs.object_mask, inputs.probe_images,
                                    inputs.probe_labels) if t is not None])
        torch.manual_seed(options.seed)
        results = run_lens(
            ws.model, images=inputs.images, labels=inputs.labels, object_mask=inputs.object_mask,
            probe_images=inputs.probe_images, probe_labels=inputs.probe_labels, control=control,
            saes=ws.saes or None, config=config,
        )
        counts = chunk_counts(run)
        files: list[Path] = []
        if ctx.is_main:
            with output_directory(out, command="lens", overwrite=overwrite) as tmp:
                written = write_lens_report(results, tmp, images=inputs.images,
                                            labels=inputs.labels,
                                            object_mask=inputs.object_mask, config=config)
                files = [out / Path(p).relative_to(tmp) for p in written]
    return LensRun(results, inputs.predicted_labels, files, counts, ctx.is_main)
