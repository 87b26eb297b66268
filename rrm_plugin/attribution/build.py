"""Building attribution graphs: one `Graph` per image from the attribution forward pass and the
edge engine (docs/method.md section 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrm_plugin.attribution.baselines import Baselines, require_baselines
from rrm_plugin.attribution.engine import (
    DEFAULT_ENGINE,
    EngineConfig,
    block_weights,
    feature_edges_batch,
    pair_inputs,
)
from rrm_plugin.attribution.forward import (
    AttributionForward,
    attribution_forward,
    check_precision,
)
from rrm_plugin.attribution.graph import Granularity, Graph, GraphLayer
from rrm_plugin.attribution.linearise import FULL, NONE
from rrm_plugin.attribution.token_engine import token_edges_batch
from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.prisma import input_check_for


def _layer_nodes(
    acts: Tensor, delta: Tensor, scores: Tensor, granularity: str
) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
    """Nodes of one layer of one image: latents that are active or away from their baseline."""
    present = (acts > 0) | (delta != 0)  # [pos, d_sae]
    if granularity == "feature":
        features = torch.nonzero(present.any(0))[:, 0]
        return (features, None, acts.sum(0)[features], delta.sum(0)[features],
                scores.sum(0)[features])
    tokens, features = torch.nonzero(present, as_tuple=True)
    return features, tokens, acts[tokens, features], delta[tokens, features], \
        scores[tokens, features]


def graphs_from_forward(
    model: nn.Module,
    saes: Mapping[str, SAE],
    forward: AttributionForward,
    *,
    granularity: Granularity = "feature",
    edges: bool = True,
    engine: EngineConfig = DEFAULT_ENGINE,
    metadata: Sequence[dict[str, Any]] | None = None,
    progress: bool = False,
) -> list[Graph]:
    """Assemble one `Graph` per image from a traced batch (edges via the fast engine)."""
    if granularity not in ("feature", "token"):
        raise RRMUserError(f"unknown granularity {granularity!r}; expected 'feature' or 'token'")
    layers = forward.layers
    weights = {k: block_weights(model, layers[k + 1].block) for k in range(len(layers) - 1)} \
        if edges else {}
    n_images = len(forward.values)
    graph_layers: list[list[GraphLayer]] = [[] for _ in range(n_images)]
    node_index: list[list[Tensor]] = [[] for _ in range(n_images)]  # [image][layer]
    # One device-to-host copy of every error score (not one sync per layer and image).
    error_scores = torch.stack([trace.error_scores for trace in layers], 1).tolist()
    for b in range(n_images):
        for k, trace in enumerate(layers):
            feats, toks, act, dlt, sc = _layer_nodes(
                trace.acts[b], trace.delta[b], trace.node_scores[b], granularity)
            node_index[b].append(feats if toks is None else torch.stack([toks, feats], dim=1))
            # Graphs live on the CPU whatever the model's device: they are small next to the
            # model, they are saved, pruned and drawn by CPU code, and one copy here keeps
            # device tensors from meeting the CPU tensors of those analyses.
            graph_layers[b].append(GraphLayer(
                hook_name=trace.hook_name, block=trace.block, d_sae=trace.acts.shape[-1],
                features=feats.cpu(), tokens=None if toks is None else toks.cpu(),
                activations=act.cpu(), deltas=dlt.cpu(), scores=sc.cpu(),
                error_score=error_scores[b][k],
            ))
    graph_edges: list[list[Tensor]] = [[] for _ in range(n_images)]
    steps = [(k, group) for k in range(len(layers) - 1) for group in
             _image_groups(node_index, k, granularity, engine)] if edges else []
    for k, group in tqdm(steps, desc="edges", disable=not progress, leave=False):
        src_h, tgt_h = layers[k].hook_name, layers[k + 1].hook_name
        xs = [pair_inputs(layers[k], layers[k + 1], forward.blocks[layers[k + 1].block],
                          saes[src_h], saes[tgt_h], b) for b in group]
        compute = feature_edges_batch if granularity == "feature" else token_edges_batch
        found = compute(weights[k], xs, sources=[node_index[b][k] for b in group],
                        targets=[node_index[b][k + 1] for b in group], config=engine)
        for b, e in zip(group, found, strict=True):
            graph_edges[b].append(e.cpu())
    graphs = []
    values, classes = forward.values.tolist(), forward.classes.tolist()
    for b in range(n_images):
        if not edges:
            graph_edges[b] = [torch.zeros(len(graph_layers[b][k]) + 1,
                                          len(graph_layers[b][k + 1]))
                              for k in range(len(layers) - 1)]
        graphs.append(Graph(
            layers=graph_layers[b], edges=graph_edges[b], target_class=int(classes[b]),
            metric=forward.metric, value=values[b], logits=forward.logits[b].cpu(),
            granularity=granularity, n_tokens=layers[0].acts.shape[1],
            linearised=forward.linearisation == FULL,
            metadata={**(metadata[b] if metadata is not None else {}), "edges": edges},
        ))
    return graphs


def _image_groups(
    node_index: list[list[Tensor]], k: int, granularity: str, engine: EngineConfig
) -> list[list[int]]:
    """Consecutive images the engine takes together for pair k: at most `images_per_step`, and
    (token granularity) a joint edge matrix within `max_token_edges` where one image fits."""
    groups: list[list[int]] = []
    n_src = n_tgt = 0
    for b, nodes in enumerate(node_index):
        s, t = len(nodes[k]), len(nodes[k + 1])
        too_big = granularity == "token" and (n_src + s + 1) * (n_tgt + t) > engine.max_token_edges
        if not groups or len(groups[-1]) >= engine.images_per_step or too_big:
            groups.append([])
            n_src = n_tgt = 0
        groups[-1].append(b)
        n_src, n_tgt = n_src + s, n_tgt + t
    return groups


def attribute(
    model: nn.Module,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "batch c h w"],
    *,
    baselines: Baselines,
    classes: int | Sequence[int] | Tensor | None = None,
    metric: str = "adjusted_logit",
    granularity: Granularity = "feature",
    linearise: bool = True,
    edges: bool = True,
    engine: EngineConfig = DEFAULT_ENGINE,
    metadata: Sequence[dict[str, Any]] | None = None,
    progress: bool = False,
) -> list[Graph]:
    """Attribution graphs for a batch of images (one `Graph` per image).

    Args:
        model: HookedViT.
        saes: `{hook_name: SAE}` on consecutive `blocks.<l>.hook_resid_post` points.
        images: `[batch, channels, height, width]`.
        baselines: Per-position baselines (e.g. `load_release_baselines("rrm-digits-vit")`).
        classes: Target class per image (default: predicted class).
        metric: `"adjusted_logit"` (default) or `"logit"`.
        granularity: `"feature"` (latent nodes summed over tokens) or `"token"`.
        linearise: Freeze attention, LayerNorm std, GELU gate and SAE std in the backward pass.
            Without it only node scores are available (`edges=False`).
        edges: Compute edges (needs `linearise=True`).
        engine: Chunking of the edge engine.
        metadata: Per-image dicts stored in each graph.
    """
    require_baselines(baselines, caller="attribute")
    check_precision(model, saes)  # before the input check, whose dtype message would mislead
    if edges and not linearise:
        raise RRMUserError("edges are defined for the linearised model; pass edges=False to get "
                           "node scores without the linearisation")
    check_input = input_check_for(model)
    if check_input is not None:
        check_input(images)
    if metadata is not None and len(metadata) != len(images):
        raise RRMUserError(f"got {len(metadata)} metadata dicts for {len(images)} images")
    forward = attribution_forward(
        model, saes, images, baselines=baselines, classes=classes, metric=metric,
        linearisation=FULL if linearise else NONE, capture_blocks=edges,
    )
    meta = [{"baselines": baselines.statistic, **(m if metadata else {})}
            for m in (metadata or [{}] * len(images))]
    return graphs_from_forward(model, saes, forward, granularity=granularity, edges=edges,
                               engine=engine, metadata=meta, progress=progress)
