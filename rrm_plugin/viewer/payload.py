"""What the circuit viewer page embeds: the graph, the precomputed circuits, the image context.

Everything is plain JSON (columnar arrays, bit-packed masks and uint8 heat maps in base64) so a
ViT-B/16 graph of ten thousand nodes stays a few megabytes and parses in the browser in well
under a second.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rrm_plugin.attribution.graph import Graph
from rrm_plugin.circuits.influence import graph_scores
from rrm_plugin.errors import RRMUserError
from rrm_plugin.viewer.cards import check_cards
from rrm_plugin.viewer.steps import (
    DEFAULT_PARAMS,
    CircuitStep,
    default_step,
    node_influence,
    nonzero_edges,
    pack_bits,
)
from rrm_plugin.viewer.steps import rounded as _round

PAYLOAD_SCHEMA = "rrm-circuit-viewer/1"
NODE_FEATURE, NODE_ERROR, NODE_LOGIT = 0, 1, 2


@dataclass
class ImageContext:
    """What only the model knows about the traced image (optional parts of the page).

    Args:
        image_png: The input image as shown to people (PNG bytes), or None.
        grid: Patch grid `(rows, cols)` of the model.
        n_prefix: Tokens before the patches (class token, registers).
        patch_activations: Per latent node in viewer order, its activation on every patch.
        lens_top: Per latent node, its feature-lens classes `[(name, score), ...]`, best first.
        runs: Per step (same order as the steps), the readouts of the circuit kept
            (`"insertion"`) and removed (`"deletion"`): logit, adjusted logit, probability,
            predicted class; None for a step without readouts (`rrm trace --readouts`).
        reference: Readouts of the clean model and of every latent at baseline.
    """

    image_png: bytes | None = None
    grid: tuple[int, int] = (0, 0)
    n_prefix: int = 1
    patch_activations: Float[Tensor, "latent_nodes patches"] | None = None
    lens_top: list[list[tuple[str, float]]] | None = None
    runs: list[dict[str, dict[str, float]] | None] | None = None
    reference: dict[str, dict[str, float]] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def node_offsets(graph: Graph) -> list[int]:
    """First viewer index of each layer (latents then error); the last entry is the logit's."""
    sizes = [len(layer) + 1 for layer in graph.layers]
    return [0, *np.cumsum(sizes).tolist()]


def _nodes(graph: Graph) -> dict[str, list]:
    layer, feature, token, kind, score, activation = [], [], [], [], [], []
    for k, lay in enumerate(graph.layers):
        n = len(lay)
        layer += [k] * (n + 1)
        feature += lay.features.tolist() + [-1]
        token += (lay.tokens.tolist() if lay.tokens is not None else [-1] * n) + [-1]
        kind += [NODE_FEATURE] * n + [NODE_ERROR]
        score += _round(lay.scores) + _round([lay.error_score])
        activation += _round(lay.activations) + [0.0]
    influence = node_influence(graph)
    top = len(graph.layers)
    return {"layer": layer + [top], "feature": feature + [-1], "token": token + [-1],
            "kind": kind + [NODE_LOGIT], "score": score + _round([graph.value]),
            "activation": activation + [0.0], "influence": influence + [1.0]}


def _flat_edges(graph: Graph) -> tuple[Tensor, Tensor, Tensor]:
    """All edges as flat (source, target, weight), logit edges last, in `graph.edges` order."""
    graph.require_dense_edges("the circuit viewer")
    offsets = node_offsets(graph)
    sources, targets, weights = [], [], []
    for k, edge in enumerate(graph.edges):
        rows, cols = torch.meshgrid(torch.arange(edge.shape[0]), torch.arange(edge.shape[1]),
                                    indexing="ij")
        sources.append(rows.flatten() + offsets[k])
        targets.append(cols.flatten() + offsets[k + 1])
        weights.append(edge.flatten().float())
    logit = graph.logit_edges
    sources.append(torch.arange(len(logit)) + offsets[-2])
    targets.append(torch.full((len(logit),), offsets[-1]))
    weights.append(logit.float())
    return torch.cat(sources), torch.cat(targets), torch.cat(weights)


def _embedded_mask(step: CircuitStep, keep: Sequence[Tensor]) -> Tensor:
    """The step's edge mask on the embedded edges (`keep`: their flat indices per edge matrix,
    then the logit edges'), without concatenating the full masks of every step."""
    masks = [m.flatten() for m in step.edge_masks] + [step.logit_edges]
    return torch.cat([m[k] for m, k in zip(masks, keep, strict=True)])


def between_kept(
    nodes: Bool[Tensor, " n_nodes"], sources: Tensor, targets: Tensor
) -> Bool[Tensor, " edges"]:
    """Embedded edges whose two ends a step keeps (the logit node always is): the edges a step's
    packed edge mask has one bit for, in embedded order. A circuit's edges join kept nodes, so
    the other edges need no bit (most of them, for the small circuits)."""
    kept = torch.cat([nodes.bool(), torch.ones(1, dtype=torch.bool)])
    return kept[sources] & kept[targets]


def _split_flat(graph: Graph, flat: Tensor) -> list[Tensor]:
    """Sorted flat edge indices (all edge matrices, then the logit edges) per matrix."""
    sizes = [e.numel() for e in graph.edges] + [len(graph.logit_edges)]
    bounds = torch.tensor(np.cumsum([0, *sizes]))
    cuts = torch.searchsorted(flat, bounds)
    return [flat[cuts[k]:cuts[k + 1]] - bounds[k] for k in range(len(sizes))]


def embedded_edges(graph: Graph, max_edges: int, per_node: int = 0) -> Tensor:
    """Flat indices of the non-zero edges the page carries: the `max_edges` strongest, and
    every node's `per_node` strongest incoming and outgoing edges (the page's edge budget)."""
    sources, targets, weights = _flat_edges(graph)
    nonzero = torch.nonzero(weights != 0)[:, 0]
    keep = torch.zeros(len(weights), dtype=torch.bool)
    if len(nonzero) > max_edges:
        keep[nonzero[weights[nonzero].abs().topk(max_edges).indices]] = True
    else:
        keep[nonzero] = True
    if per_node > 0 and len(nonzero) > max_edges:
        strength = weights[nonzero].abs()
        for ends in (sources[nonzero], targets[nonzero]):
            # Rank within each node: sort by strength, then stably by node, and keep the first
            # `per_node` of every run of equal node ids.
            by_strength = strength.argsort(descending=True, stable=True)
            by_node = ends[by_strength].argsort(stable=True)
            ordered = by_strength[by_node]
            node = ends[ordered]
            first = torch.ones_like(node, dtype=torch.bool)
            first[1:] = node[1:] != node[:-1]
            start = torch.cummax(torch.where(first, torch.arange(len(node)), 0), 0).values
            keep[nonzero[ordered[torch.arange(len(node)) - start < per_node]]] = True
    return torch.nonzero(keep)[:, 0]


def _cards(
    graph: Graph, cards: Mapping[str, Any] | None, context: ImageContext, order: Tensor
) -> dict[str, Any]:
    """Feature cards of the latent nodes, keyed by viewer node index (as a string)."""
    by_feature = {}
    if cards is not None:
        for card in cards.get("cards", {}).values():
            by_feature[(card.get("hook_name"), int(card.get("feature", -1)))] = card
    offsets = node_offsets(graph)
    out: dict[str, Any] = {}
    for index in order.tolist():
        k = int(np.searchsorted(offsets, index, side="right") - 1)
        j = index - offsets[k]
        layer = graph.layers[k]
        if j >= len(layer):
            continue  # error node
        feature = int(layer.features[j])
        card = dict(by_feature.get((layer.hook_name, feature), {}))
        if context.lens_top is not None and not card.get("lens_top"):
            card["lens_top"] = [{"class": c, "score": float(f"{s:.4g}")}
                                for c, s in context.lens_top[index - k]]
            card.setdefault("source", "computed from the traced image")
        elif card:
            card.setdefault("source", "feature cards")
        if card:
            out[str(index)] = card
    return out


def viewer_payload(
    graph: Graph,
    steps: Sequence[CircuitStep],
    *,
    context: ImageContext | None = None,
    cards: Mapping[str, Any] | None = None,
    title: str = "",
    default_params: Mapping[str, float] | None = None,
    max_edges: int = 20_000,
    edges_per_node: int = 10,
    max_cards: int = 2_000,
    warning: str | None = None,
) -> dict[str, Any]:
    """The JSON object the page reads (`rrm-circuit-viewer/1`).

    Args:
        graph: The attribution graph.
        steps: Circuits the sliders step through (`influence_steps` + `paper_steps`).
        context: Image, heat maps, feature lens and per-step readouts (from the model).
        cards: A `rrm-feature-cards/1` object (the feature dashboards' `cards.json`).
        title: Page title.
        default_params: The influence step shown first (default: node 0.8, edge 0.98).
        max_edges: Strongest edges embedded (all of them decide the circuits).
        edges_per_node: Also embedded: each node's strongest incoming and outgoing edges (the
            most the page's per-node edge budget shows).
        max_cards: Latent nodes with a feature card, by influence (the rest show their numbers).
        warning: Shown prominently by the page (`"warning"`: the text, or null).
    """
    if not steps:
        raise RRMUserError(
            "the viewer needs at least one circuit step (see rrm_plugin.viewer.steps)")
    if cards is not None:
        check_cards(cards, "feature cards")
    if warning is not None and not isinstance(warning, str):
        raise RRMUserError(f"warning must be a string or None, got {type(warning).__name__}")
    context = context or ImageContext()
    n_latent = sum(len(layer) for layer in graph.layers)
    nodes = _nodes(graph)
    sources, targets, weights = _flat_edges(graph)
    keep = embedded_edges(graph, max_edges, edges_per_node)
    default_index = default_step(steps, default_params or DEFAULT_PARAMS)

    nonzero = nonzero_edges(graph)
    keep_split = _split_flat(graph, keep)
    step_rows = []
    for i, step in enumerate(steps):
        if len(step.nodes) != len(nodes["kind"]) - 1:
            raise RRMUserError(f"step {i} masks {len(step.nodes)} nodes, the graph has "
                               f"{len(nodes['kind']) - 1} (latents + errors)")
        flagged = _embedded_mask(step, keep_split)
        ends = between_kept(step.nodes, sources[keep], targets[keep])
        if bool((flagged & ~ends).any()):
            raise RRMUserError(f"step {i} keeps an edge whose source or target it drops")
        # One bit per embedded edge between the step's nodes (`between_kept`), not per edge.
        row = {"mode": step.mode, "params": step.params, "node_count": step.node_count,
               "edge_count": step.edge_count(graph, nonzero=nonzero),
               "nodes": _b64(pack_bits(step.nodes)), "edges": _b64(pack_bits(flagged[ends]))}
        if context.runs is not None and context.runs[i] is not None:
            row["runs"] = context.runs[i]
        step_rows.append(row)

    influence = torch.tensor(nodes["influence"][:-1])
    is_latent = torch.tensor(nodes["kind"][:-1]) == NODE_FEATURE
    card_order = torch.nonzero(is_latent)[:, 0]
    card_order = card_order[influence[card_order].argsort(descending=True)[:max_cards]]

    heat = None
    if context.patch_activations is not None:
        acts = context.patch_activations.detach().cpu().float().clamp(min=0)
        if acts.shape[0] != n_latent:
            raise RRMUserError(f"patch activations cover {acts.shape[0]} nodes, the graph has "
                               f"{n_latent} latent nodes")
        scale = acts.amax(-1)
        quantised = (acts / scale.clamp(min=1e-12)[:, None] * 255).round().to(torch.uint8)
        heat = {"scale": _round(scale, 4), "values": _b64(quantised.numpy().tobytes()),
                "n_patches": acts.shape[1]}

    scores = graph_scores(graph)
    return {
        "schema": PAYLOAD_SCHEMA, "title": title, "warning": warning,
        "target": {"class": graph.target_class, "metric": graph.metric, "value": graph.value},
        "granularity": graph.granularity, "n_tokens": graph.n_tokens,
        "n_prefix": context.n_prefix, "grid": list(context.grid),
        "layers": [{"hook_name": lay.hook_name, "block": lay.block, "d_sae": lay.d_sae,
                    "n_nodes": len(lay)} for lay in graph.layers],
        "nodes": nodes,
        "edges": {"source": sources[keep].tolist(), "target": targets[keep].tolist(),
                  "weight": _round(weights[keep]), "total": int((weights != 0).sum())},
        "steps": step_rows, "default_step": default_index,
        "scores": {"replacement": scores.replacement, "completeness": scores.completeness},
        "reference": context.reference,
        "image": ("data:image/png;base64," + _b64(context.image_png)) if context.image_png
        else None,
        "heat": heat,
        "cards": _cards(graph, cards, context, card_order),
        "metadata": graph.metadata,
    }
