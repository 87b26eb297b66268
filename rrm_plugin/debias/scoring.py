"""How much each unit carries the spurious cue into the decision, on bias-conflicting images.

On an image whose cue names class `s` while it shows class `y != s`, whatever pushes the model
towards `s` is the cue (the evidence for `y` pushes the other way). The RRM score of a feature is
its attribution to `s`'s adjusted logit inside the image's pruned circuit (zero when pruned away),
averaged over images. A second circuit score uses the circuit's path structure: a latent's
attribution carried by its kept out-edges only (its edges to pruned nodes, and pruned edges,
dropped). The baselines score the same features by the full graph's attribution (no pruning),
residual neurons by the same attribution, or features by how their activation differs with the cue
within a class, with no attribution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.circuits.influence import PruneResult, prune_by_influence
from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.errors import RRMUserError
from rrm_plugin.metrics.faithfulness_methods import neuron_scores
from rrm_plugin.replacement.splice import splice_saes

UnitScores = dict[str, Float[Tensor, " units"]]
"""Per hook point, one score per unit (SAE latent or residual dimension)."""


def _batches(n: int, batch_size: int) -> range:
    if batch_size < 1:
        raise RRMUserError(f"batch_size must be at least 1, got {batch_size}")
    return range(0, n, batch_size)


class AttributionScores(NamedTuple):
    """Both scores from one set of attribution graphs."""

    circuit: UnitScores
    """Attribution inside each image's pruned circuit (zero when pruned away)."""
    full: UnitScores
    """Plain attribution of the full graph, no pruning."""
    edges: UnitScores
    """Attribution through the circuit's kept edges: a latent's kept out-edges summed (its kept
    logit edge at the top layer); zero when pruned away. A node score is the sum of all its
    out-edges (docs/method.md section 3), so this differs from `circuit` exactly by the paths
    the pruning cut."""


def attribution_feature_scores(
    model: nn.Module,
    saes: Mapping[str, SAE],
    split: SpuriousSplit,
    *,
    baselines: Baselines,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    batch_size: int = 32,
    progress: bool = False,
) -> AttributionScores:
    """Mean attribution of each latent to the cue's class: within each image's pruned circuit,
    through the circuit's kept edges, and in the full graph (the same graphs, so the three differ
    only by the pruning).

    Args:
        model: HookedViT.
        saes: `{hook_name: SAE}` on consecutive block outputs.
        split: Bias-conflicting images (`spurious != labels`); the targets are `split.spurious`.
        baselines: Baselines of `saes` (the attribution's reference and the ablation value).
        node_threshold: circuit-tracer node influence threshold of the pruning.
        edge_threshold: circuit-tracer edge influence threshold of the pruning.
        batch_size: Images per attribution pass.
    """
    circuit = {h: torch.zeros(sae.cfg.d_sae, dtype=torch.float64) for h, sae in saes.items()}
    full = {h: torch.zeros(sae.cfg.d_sae, dtype=torch.float64) for h, sae in saes.items()}
    edges = {h: torch.zeros(sae.cfg.d_sae, dtype=torch.float64) for h, sae in saes.items()}
    starts = _batches(len(split.images), batch_size)
    for start in tqdm(starts, desc="circuits", disable=not progress, leave=False):
        part = slice(start, start + batch_size)
        graphs = attribute(model, saes, split.images[part], baselines=baselines,
                           classes=split.spurious[part], metric="adjusted_logit")
        for graph in graphs:
            pruned = prune_by_influence(graph, node_threshold=node_threshold,
                                        edge_threshold=edge_threshold)
            for layer, mask in zip(graph.layers, pruned.node_masks, strict=True):
                kept = mask[:-1].cpu()  # the error node is last
                features, scores = layer.features.cpu(), layer.scores.cpu().double()
                circuit[layer.hook_name].index_add_(0, features[kept], scores[kept])
                full[layer.hook_name].index_add_(0, features, scores)
            for layer, kept_out in zip(graph.layers, kept_out_edges(graph, pruned), strict=True):
                edges[layer.hook_name].index_add_(0, layer.features.cpu(), kept_out)
    n = len(split.images)
    return AttributionScores({h: t / n for h, t in circuit.items()},
                             {h: t / n for h, t in full.items()},
                             {h: t / n for h, t in edges.items()})


def kept_out_edges(graph: Graph, pruned: PruneResult) -> list[Float[Tensor, " n"]]:
    """Per layer, each latent node's summed kept out-edges (float64, CPU): into the next layer's
    nodes, or into the logit for the top layer. Pruned nodes score 0: the pruning keeps only
    edges between kept nodes (and logit edges of kept top nodes)."""
    graph.require_dense_edges("circuit edge scores")
    out = []
    for k in range(len(graph.layers)):
        if k + 1 < len(graph.layers):
            kept = (graph.edges[k].cpu().double() * pruned.edge_masks[k].cpu()).sum(1)[:-1]
        else:
            logit = graph.logit_edges.cpu().double()
            kept = (logit * pruned.logit_edge_mask.cpu())[:-1]
        out.append(kept)
    return out


def neuron_attribution_scores(
    model: nn.Module,
    hook_names: list[str],
    split: SpuriousSplit,
    *,
    baselines: Baselines,
    batch_size: int = 64,
) -> UnitScores:
    """The same attribution for residual dimensions: gradient x (x - median x) of the cue's
    class's adjusted logit in the linearised model, summed over tokens, mean over images."""
    base = baselines.to(split.images.device)
    totals = {h: torch.zeros(model.cfg.d_model) for h in hook_names}
    for start in _batches(len(split.images), batch_size):
        part = slice(start, start + batch_size)
        scores = neuron_scores(model, hook_names, split.images[part], split.spurious[part], base,
                               "adjusted_logit")
        for h, s in zip(hook_names, scores, strict=True):
            totals[h] += s.detach().sum(0).cpu()
    return {h: total / len(split.images) for h, total in totals.items()}


@torch.no_grad()
def feature_activations(
    model: nn.Module, saes: Mapping[str, SAE], images: Tensor, *, batch_size: int = 128,
) -> dict[str, Float[Tensor, "n d_sae"]]:
    """Latent activations summed over tokens, per image (errors kept: the model is exact)."""
    names = {f"{h}.hook_sae_acts_post": h for h in saes}
    chunks: dict[str, list[Tensor]] = {h: [] for h in saes}
    with splice_saes(model, saes, keep_error=True):
        for start in _batches(len(images), batch_size):
            _, cache = model.run_with_cache(images[start:start + batch_size],
                                            names_filter=lambda n: n in names)
            for name, h in names.items():
                chunks[h].append(cache[name].sum(1).cpu())
    return {h: torch.cat(c) for h, c in chunks.items()}


def activation_difference_scores(
    model: nn.Module,
    saes: Mapping[str, SAE],
    split: SpuriousSplit,
    *,
    batch_size: int = 128,
) -> UnitScores:
    """No circuit, label confound removed: within each class y, the mean activation on images
    whose cue is v minus on images of the same class whose cue is not v; averaged over the classes
    where both exist; a latent's score is its largest such difference over cue values v.

    Comparing within a class matters on bias-conflicting images: across classes the digit is
    anti-correlated with the cue, so digit latents would score like cue latents.
    """
    acts = feature_activations(model, saes, split.images, batch_size=batch_size)
    return within_class_difference(acts, labels=split.labels.cpu(), cues=split.spurious.cpu())


def within_class_difference(
    acts: Mapping[str, Float[Tensor, "n units"]], *, labels: Int[Tensor, " n"],
    cues: Int[Tensor, " n"],
) -> UnitScores:
    """`activation_difference_scores` on given activations (module doc)."""
    pairs = []  # (cue value, members with it, same-class members without it)
    for y in labels.unique().tolist():
        in_class = labels == y
        for v in cues[in_class].unique().tolist():
            with_v, without_v = in_class & (cues == v), in_class & (cues != v)
            if with_v.any() and without_v.any():
                pairs.append((v, with_v, without_v))
    if not pairs:
        raise RRMUserError("activation-difference scores need, within some class, images with "
                           "different cue values")
    values = sorted({v for v, _, _ in pairs})
    scores = {}
    for h, a in acts.items():
        a = a.double()
        per_value = []
        for v in values:
            diffs = [a[w].mean(0) - a[wo].mean(0) for u, w, wo in pairs if u == v]
            per_value.append(torch.stack(diffs).mean(0))
        scores[h] = torch.stack(per_value).max(0).values
    return scores
