"""The lens run's files (`lens.json`, the per-token tensors, the figures) and its printed
headline numbers."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import write_json, write_tensors
from rrm_plugin.lens.plots import (
    plot_identifiability,
    plot_mechanisms,
    plot_perturbation,
    plot_probes,
    plot_token_maps,
)
from rrm_plugin.lens.report import PAPER, LensConfig, LensResults


def write_lens_report(
    results: LensResults,
    out_dir: Path,
    *,
    images: Tensor,
    labels: Tensor,
    object_mask: Tensor | None = None,
    config: LensConfig = LensConfig(),  # noqa: B008  (frozen)
) -> list[Path]:
    """`lens.json` (all numbers), `lens_tensors.safetensors` (per-token arrays) and PNG plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = results.summary
    n_layers = summary["model"]["n_layers"]
    blocks = list(config.map_blocks) if config.map_blocks is not None else list(range(n_layers))
    bad = [b for b in blocks if not 0 <= b < n_layers]
    if bad:
        raise RRMUserError(f"map_blocks {bad} out of range: the model has blocks 0..{n_layers - 1}")
    n_show = min(config.n_example_images, len(images))
    written = [
        write_json(out_dir / "lens.json", summary),
        write_tensors(out_dir / "lens_tensors.safetensors", {
            "token_identifiability": results.token_scores, "patch_importance": results.importance,
            **{f"curve.{k}": v for k, v in results.curves.items()},
            **{f"feature_class_scores.{k}": v for k, v in results.feature_scores.items()},
        }),
    ]
    plot_identifiability(summary, out_dir / "identifiability.png")
    plot_token_maps(images[:n_show], labels[:n_show], results.token_scores[:, :n_show],
                    out_dir / "token_maps.png", blocks=blocks,
                    object_mask=None if object_mask is None else object_mask[:n_show])
    plot_perturbation(summary, out_dir / "perturbation.png")
    plot_mechanisms(summary, out_dir / "mechanisms.png")
    pngs = ["identifiability.png", "token_maps.png", "perturbation.png", "mechanisms.png"]
    if "linear_probes" in summary:
        plot_probes(summary, out_dir / "probes.png")
        pngs.append("probes.png")
    return written + [out_dir / name for name in pngs]


def format_summary(summary: dict) -> str:
    """A few headline numbers, one per line, next to the paper's."""
    ident = summary["identifiability"]
    pert = summary["perturbation"]["auc"]
    lines = [
        f"accuracy {100 * summary['accuracy']:.1f}% on {summary['n_images']} images",
        "identifiability rate per block (% image tokens, true class top-1): "
        + ", ".join(f"{v:.1f}" for v in ident["identifiability_rate"])
        + f"  [paper, last block: {PAPER['identifiability_rate_last_block']}]",
        "images with >= 1 identifiable token per block (%): "
        + ", ".join(f"{v:.1f}" for v in ident["images_with_identifiable_token"]),
        "perturbation AUC (authors' normalisation): "
        + ", ".join(f"{k} {v:.3f}" for k, v in pert.items() if v is not None)
        + "  [paper B/32: ours 0.836/0.413, random 0.716, probe 0.739/0.683]",
    ]
    diagnostics = summary["perturbation"].get("diagnostics")
    if diagnostics:
        lines.append("negative AUC of importance parts: " + ", ".join(
            f"{k} {v:.3f}" for k, v in diagnostics["auc"].items() if v is not None))
        if "least_important_quarter" in diagnostics:
            quarter = diagnostics["least_important_quarter"]
            lines.append("object share of the least important quarter of patches: " + ", ".join(
                f"{k} {100 * v:.1f}%" for k, v in quarter["object_share"].items())
                + f" (base rate {100 * quarter['base_rate']:.1f}%)")
    for kind, entry in summary["memories"].items():
        lines.append(f"{kind} key-value agreement per block (%): "
                     + ", ".join(f"{v:.1f}" for v in entry["key_value_all"])
                     + " (wrong-class control: "
                     + ", ".join(f"{v:.1f}" for v in entry["key_value_control"]) + ")")
    if "context_vs_object" in summary:
        tests = summary["context_vs_object"]["identifiability"]
        lines.append("object - context identifiability per block: " + ", ".join(
            f"{t['difference']:+.3f} (p_obj>ctx={t['p_value']:.3g}, "
            f"p_obj<ctx={t['p_value_lower']:.3g})" for t in tests))
    return "\n".join(lines)
