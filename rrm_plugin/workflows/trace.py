"""Trace one image end to end: graph, pruned circuit, its faithfulness, figure and JSON files."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig
from rrm_plugin.attribution.graph import Granularity, Graph
from rrm_plugin.attribution.graph_views import graph_json
from rrm_plugin.attribution.targets import image_readout
from rrm_plugin.circuits.circuit import Circuit, run_circuits
from rrm_plugin.circuits.figure import plot_circuit, top_patches
from rrm_plugin.circuits.influence import graph_scores, prune_by_influence
from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.vit import n_prefix_tokens
from rrm_plugin.io import write_json
from rrm_plugin.lens.features import feature_lens
from rrm_plugin.viewer.build import build_viewer, write_viewer


@dataclass(frozen=True)
class TraceConfig:
    """How `trace_image` builds and prunes the circuit.

    Args:
        target_class: Class to explain (None: the predicted class).
        metric: `"adjusted_logit"` (default) or `"logit"`.
        granularity: `"feature"` or `"token"` nodes.
        node_threshold: circuit-tracer node influence threshold.
        edge_threshold: circuit-tracer edge influence threshold.
        max_nodes_per_layer: Latents drawn per layer in the figure.
        max_json_edges: Strongest edges written to the readable `graph.json` (the lossless
            files keep every edge).
        viewer: Write the interactive `circuit.html` (and its `viewer.json`).
        token_top_k: Token graphs only: keep each node's strongest in-edges (sparse edge
            matrices, `EngineConfig.token_top_k`), for ViT-B-sized token graphs. The viewer
            needs dense edges, so it is refused with this.
    """

    target_class: int | None = None
    metric: str = "adjusted_logit"
    granularity: Granularity = "feature"
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    max_nodes_per_layer: int = 6
    max_json_edges: int = 100_000
    viewer: bool = True
    token_top_k: int | None = None

    def __post_init__(self) -> None:
        if self.token_top_k is not None and self.granularity != "token":
            raise RRMUserError("token_top_k applies to token graphs: set granularity='token'")
        if self.token_top_k is not None and self.viewer:
            raise RRMUserError("the viewer needs dense edges; a token_top_k graph is traced "
                               "without it (viewer=False, --no-viewer)")


def trace_image(
    model: nn.Module,
    saes: Mapping[str, SAE],
    image: Float[Tensor, "c h w"],
    *,
    baselines: Baselines,
    out_dir: Path,
    reference_images: Tensor,
    config: TraceConfig = TraceConfig(),
    metadata: dict[str, Any] | None = None,
    display: Callable[[Tensor], Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    cards: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Graph -> circuit-tracer pruning -> insertion / deletion of the circuit -> files.

    `display` maps model inputs to [0, 1] RGB for the figure (e.g. undoing the normalisation).
    Writes `graph.json` (readable), `graph.lossless.{json,safetensors}` (`Graph.load`),
    `circuit.json`, `circuit.png`, `summary.json` and the viewer `circuit.html` (with
    `class_names` and the feature `cards` of `rrm_plugin.viewer`) under `out_dir`; returns the
    summary.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = image[None]
    graph: Graph = attribute(
        model, saes, batch, baselines=baselines, classes=config.target_class,
        metric=config.metric, granularity=config.granularity, metadata=[metadata or {}],
        engine=EngineConfig(token_top_k=config.token_top_k),
    )[0]
    pruned = prune_by_influence(graph, node_threshold=config.node_threshold,
                                edge_threshold=config.edge_threshold)
    circuit = Circuit.from_graph(graph, pruned.node_masks, edge_masks=pruned.edge_masks,
                                 logit_edge_mask=pruned.logit_edge_mask)
    cls = graph.target_class
    runs = {mode: image_readout(run_circuits(model, saes, batch, circuit, baselines=baselines,
                                        mode=mode)[0], cls)
            for mode in ("insertion", "deletion")}
    empty = Circuit(circuit.hook_names, [torch.zeros_like(m) for m in circuit.latents],
                    torch.zeros_like(circuit.errors))
    runs["all_at_baseline"] = image_readout(
        run_circuits(model, saes, batch, empty, baselines=baselines)[0], cls)
    scores = graph_scores(graph)
    summary = {
        "target_class": cls, "metric": graph.metric, "value": graph.value,
        "clean": image_readout(graph.logits, cls), **runs,
        "circuit_nodes": circuit.node_count, "circuit_edges": len(circuit.edges),
        "graph_nodes": sum(len(layer) for layer in graph.layers) + len(graph.layers) + 1,
        "circuit_tracer_replacement_score": scores.replacement,
        "circuit_tracer_completeness_score": scores.completeness,
        "error_scores": graph.error_scores.tolist(),
        "feature_score_sum": [float(layer.scores.sum()) for layer in graph.layers],
        "metadata": metadata or {},
    }
    features = {h: circuit.layer_features(k) for k, h in enumerate(circuit.hook_names)}
    examples = top_patches(model, saes, reference_images, features)
    classes = {h: fc.top_classes[:, 0] for h, fc in feature_lens(model, saes, top_k=1).items()}
    show = display or (lambda x: x)
    plot_circuit(
        graph, circuit, show(image).cpu(), path=out_dir / "circuit.png", examples=examples,
        reference_images=show(reference_images).cpu(), patch_size=model.cfg.patch_size,
        n_prefix=n_prefix_tokens(model),
        max_nodes_per_layer=config.max_nodes_per_layer, feature_classes=classes,
        title=(f"class {cls}: {circuit.node_count} nodes keep "
               f"{runs['insertion']['adjusted_logit']:.2f} of {graph.value:.2f} adjusted logit"),
    )
    write_json(out_dir / "graph.json", graph_json(graph, max_edges=config.max_json_edges))
    graph.save(out_dir / "graph.lossless")
    write_json(out_dir / "circuit.json", {
        **circuit.to_json_dict(),
        "thumbnails": {f"{h}/F{f}": [e._asdict() for e in ex] for (h, f), ex in examples.items()},
    })
    write_json(out_dir / "summary.json", summary)
    if config.viewer:
        write_viewer(out_dir, build_viewer(
            graph, model=model, saes=saes, image=image, baselines=baselines, display=display,
            class_names=class_names, cards=cards, all_at_baseline=runs["all_at_baseline"],
            title=f"{(metadata or {}).get('model', 'model')}: class {cls}",
            default_params={"node_threshold": config.node_threshold,
                            "edge_threshold": config.edge_threshold}))
    # Names, not paths: the CLI writes into a temporary folder that is renamed when done.
    summary["files"] = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    return summary
