"""Circuit part of `rrm demo`: trace a few held-out images of the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import rrm_plugin
from rrm_plugin.io import write_json
from rrm_plugin.viewer.render import write_index
from rrm_plugin.workflows.trace import TraceConfig, trace_image
from rrm_plugin.zoo.baselines import load_release_baselines


def describe_circuit(report: dict[str, Any]) -> str:
    """One line on one traced image of `trace_demo`'s result (the CLI prints it)."""
    index = report["test_index"]
    return (f"image {index} (label {report['label']}): circuit of {report['circuit_nodes']} "
            f"nodes; adjusted logit clean {report['value']:.2f}, circuit only "
            f"{report['insertion']['adjusted_logit']:.2f}, circuit deleted "
            f"{report['deletion']['adjusted_logit']:.2f}, all at baseline "
            f"{report['all_at_baseline']['adjusted_logit']:.2f} "
            f"-> circuits/image_{index:04d}/circuit.png")


def trace_demo(
    out_dir: Path,
    *,
    n_images: int = 3,
    model_name: str = "digits-vit",
    release: str = "rrm-digits-vit",
    seed: int = 0,
) -> dict[str, Any]:
    """Trace circuits for `n_images` correctly classified held-out images and report them.

    Writes one folder per image (`circuit.png`, `graph.json`, `circuit.json`, `summary.json`)
    under `out_dir/circuits/` plus `out_dir/circuits/circuits.json`; returns that summary (one
    line per image: `describe_circuit`). Prints nothing.
    """
    model = rrm_plugin.load_model(model_name)
    saes = rrm_plugin.load_saes(release)
    baselines = load_release_baselines(release, saes)
    test = rrm_plugin.load_test_set(model_name)
    with torch.no_grad():
        correct = torch.nonzero(model(test.images).argmax(-1) == test.labels)[:, 0]
    generator = torch.Generator().manual_seed(seed)
    chosen = correct[torch.randperm(len(correct), generator=generator)[:n_images]].sort().values
    root = Path(out_dir) / "circuits"
    reports = []
    for index in chosen.tolist():
        summary = trace_image(
            model, saes, test.images[index], baselines=baselines,
            out_dir=root / f"image_{index:04d}", reference_images=test.images,
            config=TraceConfig(), metadata={"model": model_name, "release": release,
                                            "test_index": index, "label": int(test.labels[index])},
        )
        reports.append({"test_index": index, "label": int(test.labels[index]), **summary})
    # Relative to `out_dir`, which the CLI renames into place when the run is done.
    result = {"images": reports, "figures": [f"circuits/image_{r['test_index']:04d}/circuit.png"
                                             for r in reports]}
    write_json(root / "circuits.json", result)
    write_index(root / "index.html", [
        {"href": f"image_{r['test_index']:04d}/circuit.html", "label": f"image {r['test_index']}",
         "numbers": {"label": r["label"], "circuit nodes": r["circuit_nodes"],
                     "kept adj. logit": round(r["insertion"]["adjusted_logit"], 3)}}
        for r in reports], title="rrm demo: circuits of held-out digits")
    return result
