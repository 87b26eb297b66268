"""How each feature takes part in the RRM circuits of an image set (docs/method.md sections 3-4).

Every image's attribution graph is pruned with circuit-tracer's influence rule; a feature
"enters" the circuit of an image when its node survives. Per feature we count the circuits it
enters, with which sign of node score, and sum the kept edges into and out of it over all
circuits, which gives its strongest upstream and downstream features. Accumulation is one dense
`index_put_` per graph and layer pair (no loop over features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rrm_plugin.attribution.graph import Graph
from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.errors import RRMUserError


@dataclass
class CircuitParticipation:
    """Circuit statistics of every feature of every SAE layer, over `n_graphs` graphs.

    Args:
        hook_names: SAE hook points, bottom to top.
        count: Per layer, `[d_sae]` circuits the feature enters.
        positive: Per layer, `[d_sae]` of those where its node score is > 0.
        negative: Per layer, `[d_sae]` of those where its node score is < 0.
        score_sum: Per layer, `[d_sae]` node scores summed over the circuits it enters.
        edges: Per adjacent layer pair k, `[d_sae_k + 1, d_sae_{k+1}]` kept edge weights summed
            over circuits (last row: layer k's error node).
        logit_edges: `[d_sae_top]` kept edges of the top layer into the target logit, summed.
        n_graphs: Graphs aggregated.
    """

    hook_names: list[str]
    count: list[Int[Tensor, " d_sae"]]
    positive: list[Int[Tensor, " d_sae"]]
    negative: list[Int[Tensor, " d_sae"]]
    score_sum: list[Float[Tensor, " d_sae"]]
    edges: list[Float[Tensor, "src_plus_error tgt"]]
    logit_edges: Float[Tensor, " d_sae_top"]
    n_graphs: int

    def upstream(self, layer: int, *, top: int = 3) -> tuple[Tensor, Tensor]:
        """`(features, weights)` `[d_sae, top]`: strongest sources by |summed edge| (no error)."""
        if layer == 0:
            empty = torch.zeros(self.count[0].shape[0], 0)
            return empty.long(), empty
        weights = self.edges[layer - 1][:-1].T  # [d_sae_layer, d_sae_below]
        return _strongest(weights, top)

    def downstream(self, layer: int, *, top: int = 3) -> tuple[Tensor, Tensor]:
        """`(features, weights)` `[d_sae, top]`: strongest targets in the layer above."""
        if layer == len(self.count) - 1:
            empty = torch.zeros(self.count[layer].shape[0], 0)
            return empty.long(), empty
        return _strongest(self.edges[layer][:-1], top)


def _strongest(weights: Tensor, top: int) -> tuple[Tensor, Tensor]:
    top = min(top, weights.shape[1])
    order = weights.abs().topk(top, dim=1).indices
    values = weights.gather(1, order)
    # A source with no kept edge is no source: mark it -1.
    return torch.where(values != 0, order, -1), values


def circuit_participation(
    graphs: Sequence[Graph], *, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> CircuitParticipation:
    """Aggregate influence-pruned circuits of feature-granularity graphs.

    Args:
        graphs: Attribution graphs (`granularity="feature"`) of one model and SAE release.
        node_threshold: circuit-tracer's node influence threshold.
        edge_threshold: circuit-tracer's edge influence threshold.
    """
    if not graphs:
        raise RRMUserError("no graphs given: expected at least one attribution graph")
    sums = participation_sums(graphs, node_threshold=node_threshold,
                              edge_threshold=edge_threshold)
    return participation_from_sums([sums], hook_names=[layer.hook_name
                                                       for layer in graphs[0].layers])


def participation_sums(
    graphs: Sequence[Graph], *, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> dict[str, Tensor]:
    """The sums of `circuit_participation` over `graphs`, as flat tensors: batches of graphs
    (possibly from other processes) are combined by `participation_from_sums`."""
    first = graphs[0]
    hooks = [layer.hook_name for layer in first.layers]
    sizes = [layer.d_sae for layer in first.layers]
    count = [torch.zeros(d, dtype=torch.long) for d in sizes]
    positive = [torch.zeros(d, dtype=torch.long) for d in sizes]
    negative = [torch.zeros(d, dtype=torch.long) for d in sizes]
    score_sum = [torch.zeros(d, dtype=torch.float64) for d in sizes]
    edges = [torch.zeros(sizes[k] + 1, sizes[k + 1], dtype=torch.float64)
             for k in range(len(sizes) - 1)]
    logit = torch.zeros(sizes[-1], dtype=torch.float64)
    for graph in graphs:
        if graph.granularity != "feature":
            raise RRMUserError("circuit participation needs feature-granularity graphs, got "
                               f"granularity={graph.granularity!r}")
        if [layer.hook_name for layer in graph.layers] != hooks:
            raise RRMUserError("graphs come from different SAE layers: expected hooks "
                               f"{hooks}, got {[layer.hook_name for layer in graph.layers]}")
        graph.require_dense_edges("feature circuit statistics")
        pruned = prune_by_influence(graph, node_threshold=node_threshold,
                                    edge_threshold=edge_threshold)
        for k, layer in enumerate(graph.layers):
            kept = pruned.node_masks[k][:-1]
            features, scores = layer.features[kept], layer.scores[kept].double()
            count[k].index_add_(0, features, torch.ones_like(features))
            positive[k].index_add_(0, features, (scores > 0).long())
            negative[k].index_add_(0, features, (scores < 0).long())
            score_sum[k].index_add_(0, features, scores)
        for k, block in enumerate(graph.edges):
            src = torch.cat([graph.layers[k].features, torch.tensor([sizes[k]])])
            tgt = graph.layers[k + 1].features
            kept = block.double() * pruned.edge_masks[k]
            edges[k].index_put_((src[:, None].expand_as(kept), tgt[None, :].expand_as(kept)),
                                kept, accumulate=True)
        top = graph.layers[-1]
        logit.index_add_(0, top.features, top.scores.double() * pruned.logit_edge_mask[:-1])
    sums = {"n_graphs": torch.tensor(len(graphs)), "logit_edges": logit}
    for name, per_layer in (("count", count), ("positive", positive), ("negative", negative),
                            ("score_sum", score_sum), ("edges", edges)):
        sums.update({f"{name}/{k}": t for k, t in enumerate(per_layer)})
    return sums


def participation_from_sums(
    parts: Sequence[dict[str, Tensor]], *, hook_names: Sequence[str]
) -> CircuitParticipation:
    """`CircuitParticipation` of the `participation_sums` of consecutive batches of graphs."""
    total = dict(parts[0])
    for part in parts[1:]:  # in batch order, so every process count gives the same sums
        total = {key: total[key] + part[key] for key in total}
    n_layers = len(hook_names)

    def layers(name: str, n: int) -> list[Tensor]:
        return [total[f"{name}/{k}"] for k in range(n)]

    return CircuitParticipation(
        hook_names=list(hook_names), count=layers("count", n_layers),
        positive=layers("positive", n_layers), negative=layers("negative", n_layers),
        score_sum=[s.float() for s in layers("score_sum", n_layers)],
        edges=[e.float() for e in layers("edges", n_layers - 1)],
        logit_edges=total["logit_edges"].float(), n_graphs=int(total["n_graphs"]),
    )
