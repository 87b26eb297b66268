"""`rrm faithfulness`: a model, its SAEs and images -> insertion / deletion curves and AUCs (the
RRM paper's protocol) against the baseline circuits, into an output folder written as a unit
(`faithfulness.json`, `.png`, `.md`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import write_json, write_text
from rrm_plugin.metrics.faithfulness import METHODS, FaithfulnessConfig, evaluate_faithfulness
from rrm_plugin.metrics.faithfulness_plot import plot_faithfulness
from rrm_plugin.metrics.faithfulness_result import FaithfulnessResult
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
from rrm_plugin.workflows.inputs import dataset_images, predicted_labels
from rrm_plugin.workflows.workspace import load_workspace

FILES = ("faithfulness.json", "faithfulness.png", "faithfulness.md")


@dataclass(frozen=True, kw_only=True)
class FaithfulnessOptions(DatasetInputs):
    """Every setting of a faithfulness run, named as `rrm faithfulness`'s options
    (`FaithfulnessConfig` documents them; `methods` None: all of `METHODS`; `baselines`: a file
    from `rrm baselines`, else the documented order of `resolve_baselines`)."""

    baselines: Path | str | None = None
    n_images: int | None = None
    image_indices: list[int] | None = None
    seed: int = 42
    metric: str = "adjusted_logit"
    methods: list[str] | None = None
    criterion: str = "topn"
    ties: str = "raw"
    skip_early_layers: int = 0
    normalisation: str = "clamp"
    batch_size: int = 64

    def config(self) -> FaithfulnessConfig:
        methods = METHODS if self.methods is None else tuple(self.methods)
        return FaithfulnessConfig(n_images=self.n_images, seed=self.seed, metric=self.metric,
                                  methods=methods, normalisation=self.normalisation,
                                  batch_size=self.batch_size, criterion=self.criterion,
                                  ties=self.ties, skip_early_layers=self.skip_early_layers,
                                  image_indices=None if self.image_indices is None
                                  else tuple(self.image_indices))


class FaithfulnessRun(NamedTuple):
    """What a faithfulness run gives every process; `table` (the markdown written) and the files
    only on the main process (others: empty)."""

    result: FaithfulnessResult
    model_name: str
    baselines: str              # where the baselines came from
    predicted_labels: bool      # unlabelled images: each explained for its predicted class
    n_labels: int
    table: str
    counts: ChunkCounts
    is_main: bool


def faithfulness_table(result: FaithfulnessResult) -> str:
    """The markdown table written to `faithfulness.md` (with circuit-tracer's pruning, if run)."""
    table = result.table()
    if result.influence_circuit:  # circuit-tracer influence pruning: printed, not only in JSON
        table += ("\n\ncircuit-tracer influence pruning (0.8 / 0.98) of the RRM graphs; its "
                  "completeness score is circuit-tracer's, not the RRM paper's Table 1 column."
                  "\n\n| influence-pruned circuits (mean over images) | value |\n|---|---|\n")
        table += "\n".join(f"| {name} | {value:.3f} |"
                           for name, value in sorted(result.influence_circuit.items()))
    return table


def faithfulness_to_folder(out: str | Path, *,
                           options: FaithfulnessOptions | None = None,
                           device: str = "cpu", chunks: Path | None = None,
                           keep_chunks: bool = False, overwrite: bool = False,
                           progress: bool = True) -> FaithfulnessRun:
    """Load the workspace, the images (default: the embedded model's held-out set) and the
    baselines, run `evaluate_faithfulness` sharded over `torchrun`'s processes (resumable from
    `chunks`), and write `out` (checked before any work) on the main process."""
    options = options if options is not None else FaithfulnessOptions()
    out = Path(out)
    config = options.config()  # every option checked before the model loads
    check_chunk_folder(chunks, out)
    check_output_directory(out, command="faithfulness", overwrite=overwrite,
                           inputs=existing_inputs(options.images, options.baselines,
                                                  options.model, options.release, chunks))
    ctx = start_processes(device)
    ws = load_workspace(model=options.model, release=options.release, device=ctx.device,
                        dtype=options.dtype)
    loaded = dataset_images(options.images, ws.model)
    if options.skip_early_layers >= len(ws.saes):
        raise RRMUserError(f"--skip-early-layers {options.skip_early_layers} leaves no SAE "
                           f"layer to mask ({len(ws.saes)} in {ws.release})")
    with dataset_run(settings_of(options), ws, ctx, command="faithfulness", out=out,
                     images=loaded.images, labels=loaded.labels,
                     chunks=chunks, keep_chunks=keep_chunks) as run:
        labels = loaded.labels
        if labels is None:
            # Unlabelled images: explain the predicted class (every image counts as "correct").
            labels = predicted_labels(ws.model, loaded.images, batch_size=options.batch_size)
        baselines, how, _ = resolve_baselines(ws.model, ws.saes, images=loaded.images,
                                           path=options.baselines)
        run.extend_key(baseline_tensors(baselines))
        result = evaluate_faithfulness(ws.model, ws.saes, loaded.images, labels,
                                       baselines=baselines, config=config,
                                       progress=progress and ctx.is_main)
        counts = chunk_counts(run)
        table = ""
        if ctx.is_main:
            summary = result.to_json_dict()
            summary["metadata"] = {"model": ws.model_name, "release": ws.release,
                                   "baselines": how,
                                   "files": [loaded.files[i] for i in result.image_indices]
                                   if loaded.files else None}
            table = faithfulness_table(result)
            with output_directory(out, command="faithfulness", overwrite=overwrite) as tmp:
                write_json(tmp / "faithfulness.json", summary)
                plot_faithfulness(result, tmp / "faithfulness.png")
                write_text(tmp / "faithfulness.md", table + "\n")
    return FaithfulnessRun(result, ws.model_name, how, loaded.labels is None, len(labels), table,
                           counts, ctx.is_main)
