"""`rrm trace`: a model and release by name or folder, an image by file or held-out index, traced
into an output folder written as a unit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rrm_plugin.runs.output import output_directory
from rrm_plugin.workflows.inputs import traced_image
from rrm_plugin.workflows.trace import TraceConfig, TraceResult, trace
from rrm_plugin.workflows.workspace import load_workspace
from rrm_plugin.zoo.inputs import load_images


def trace_to_folder(
    image: str | int,
    out: str | Path,
    *,
    model: str | None = None,
    release: str | None = "rrm-digits-vit",
    device: str = "cpu",
    dtype: str | None = None,
    baselines: str | Path | None = None,
    reference_images: Sequence[str | Path] | None = None,
    feature_cards: str | Path | None = None,
    config: TraceConfig | None = None,
    overwrite: bool = False,
) -> tuple[TraceResult, list[str]]:
    """Load the workspace (`load_workspace`), trace `image` (a file, or an index into the
    embedded model's held-out set) and write the trace into `out` (`TraceResult.save`, named
    `--out` in errors). Returns the result and the names of the files written."""
    ws = load_workspace(model=model, release=release, device=device, dtype=dtype)
    picked, source = traced_image(image, ws.model)
    reference = (load_images(reference_images, model=ws.model).images if reference_images
                 else None)
    result = trace(ws.model, ws.saes, picked, baselines=baselines, config=config or TraceConfig(),
                   reference_images=reference, cards=feature_cards, metadata=source)
    with output_directory(out, command="trace", overwrite=overwrite) as tmp:
        files = result.write(tmp)
    return result, files
