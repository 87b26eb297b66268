"""circuit-tracer's global influence pruning and graph scores on a layered RRM graph.

One algorithm over an edge reader (`rrm_plugin.circuits.edge_readers`: dense matrices or the
stored entries of sparse ones): row-normalised |A|, influence `w (A + A^2 + ...)` computed layer
by layer since edges only join adjacent layers, nodes to 0.8 of the influence, edges to 0.98,
dangling nodes dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rrm_plugin.attribution.graph import Graph
from rrm_plugin.circuits.edge_readers import DenseEdges, SparseEdges, edge_reader
from rrm_plugin.circuits.pruning import check_fraction


class _SortedScores(NamedTuple):
    ordered: Tensor
    cumulative: Tensor


def _sort_scores(scores: Tensor) -> _SortedScores:
    ordered = torch.sort(scores, descending=True).values
    return _SortedScores(ordered, ordered.cumsum(0) / ordered.sum().clamp(min=1e-30))


def _cut_at(sorted_scores: _SortedScores, threshold: float) -> Tensor:
    """The smallest score among those that carry `threshold` of the total."""
    ordered, cumulative = sorted_scores
    index = min(int(torch.searchsorted(cumulative, torch.tensor(threshold))), len(ordered) - 1)
    return ordered[index]


class PruneResult(NamedTuple):
    node_masks: list[Bool[Tensor, " n_plus_error"]]
    """Per layer, kept latent nodes and (last) the error node."""
    edge_masks: list[Bool[Tensor, "n_src_plus_error n_tgt"]]
    """Kept edges, aligned with `graph.edges` (sparse boolean tensors for sparse edges)."""
    logit_edge_mask: Bool[Tensor, " n_top_plus_error"]
    influence: list[Float[Tensor, " n_plus_error"]]
    """Influence of each node on the logit in the unpruned graph."""


def prune_by_influence(
    graph: Graph, *, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneResult:
    """circuit-tracer's `prune_graph` on a layered RRM graph.

    Keeps the nodes carrying `node_threshold` of the total influence, then the edges carrying
    `edge_threshold` of the edge influence among them, then drops nodes left without an outgoing
    edge (latents and errors) or, for latents above the bottom layer, without an incoming one.
    Bottom-layer latents play the role of circuit-tracer's input tokens (they have no sources).
    Sparse (top-k token) graphs are pruned over their stored edges; their edge masks are then
    sparse boolean tensors.
    """
    grid = prune_by_influence_grid(graph, node_thresholds=[node_threshold],
                                   edge_thresholds=[edge_threshold])
    return grid[(node_threshold, edge_threshold)]


def prune_by_influence_grid(
    graph: Graph, *, node_thresholds: Sequence[float], edge_thresholds: Sequence[float]
) -> dict[tuple[float, float], PruneResult]:
    """`prune_by_influence` at every (node, edge) threshold pair.

    The node influence is computed once and the edge scores (and their sort) once per node
    threshold, since neither depends on the edge threshold: a slider grid of a ViT-B graph costs
    a few sorts instead of one per position.
    """
    edges = edge_reader(graph)
    for t in node_thresholds:
        check_fraction("node_threshold", t)
    for t in edge_thresholds:
        check_fraction("edge_threshold", t)
    influence = edges.influence(edges.adjacency())
    sorted_nodes = _sort_scores(torch.cat(influence))
    results = {}
    for node_t in node_thresholds:
        cut = _cut_at(sorted_nodes, node_t)
        nodes = [inf >= cut for inf in influence]
        between = edges.between(nodes)
        pruned = edges.adjacency([m.float() for m in between], nodes[-1].float())
        pruned_influence = edges.influence(pruned)
        # Edge score: normalised weight times the target's influence (+1 for the logit target).
        scores = edges.edge_scores(pruned, pruned_influence)
        sorted_edges = _sort_scores(torch.cat([s.flatten() for s in scores] + [pruned.logit]))
        for edge_t in edge_thresholds:
            edge_cut = _cut_at(sorted_edges, edge_t)
            edge_masks = [(s >= edge_cut) & m for s, m in zip(scores, between, strict=True)]
            logit_mask = (pruned.logit >= edge_cut) & nodes[-1]
            kept_nodes, kept_edges, kept_logit = _drop_unconnected(
                edges, [n.clone() for n in nodes], edge_masks, logit_mask)
            results[(node_t, edge_t)] = PruneResult(
                kept_nodes, edges.edge_masks(kept_edges), kept_logit, influence)
    return results


def _drop_unconnected(
    edges: DenseEdges | SparseEdges, nodes: list[Tensor], edge_masks: list[Tensor],
    logit_mask: Tensor,
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Drop nodes without an outgoing kept edge (or an incoming one above the bottom layer) and
    the edges they ended, until nothing changes: circuit-tracer's repeated sweep.

    Its fixed point is the set of nodes on a complete path (a source: bottom-layer latent or any
    error node, up through kept nodes and edges, to a kept logit edge): every node of that set
    has its path's neighbours in it, and a node left after the sweeps reaches a source by its
    incoming edges and the logit by its outgoing ones. So it is computed in two passes, one up
    and one down, instead of repeated sweeps over every edge matrix.
    """
    up = [nodes[0]]  # reached from a source
    for k in range(len(nodes) - 1):
        reached = nodes[k + 1].clone()
        reached[:-1] &= edges.reached_targets(k, edge_masks[k], up[k])
        up.append(reached)
    down = [torch.zeros(0, dtype=torch.bool)] * len(nodes)  # reaching the logit
    down[-1] = up[-1] & logit_mask
    for k in range(len(nodes) - 2, -1, -1):
        down[k] = up[k] & edges.reaching_sources(k, edge_masks[k], down[k + 1][:-1])
    edge_masks = [m & b for m, b in zip(edge_masks, edges.between(down), strict=True)]
    return down, edge_masks, logit_mask & down[-1]


class GraphScores(NamedTuple):
    replacement: float
    """Influence of input nodes / (input + error nodes): how much flows through features."""
    completeness: float
    """circuit-tracer's completeness score: influence-weighted share of incoming edge weight that
    does not come from error nodes. Not the RRM paper's Table 1 "completeness" column, which the
    authors' public code does not compute."""


def graph_scores(graph: Graph) -> GraphScores:
    """circuit-tracer's replacement and completeness scores; inputs = bottom-layer latents."""
    edges = edge_reader(graph)
    adjacency = edges.adjacency()
    return circuit_tracer_scores(edges.influence(adjacency), edges.error_shares(adjacency),
                                 adjacency.logit[-1])


def circuit_tracer_scores(
    influence: Sequence[Tensor], error_shares: Sequence[Tensor], logit_error_share: Tensor
) -> GraphScores:
    """Replacement and completeness scores from the node influence, each latent's share of
    incoming weight from error nodes (`error_shares[k]`: the latents of layer k+1) and the
    logit's share from the top error node."""
    inputs = influence[0][:-1].sum()
    errors = sum(inf[-1] for inf in influence)
    replacement = float(inputs / (inputs + errors).clamp(min=1e-30))
    weighted, total = torch.tensor(0.0), torch.tensor(0.0)
    for k, inf in enumerate(influence):
        # Latents above the bottom take error weight from their sources' error column.
        non_error = torch.ones_like(inf)
        if k > 0:
            non_error[:-1] = 1 - error_shares[k - 1]
        weighted += (non_error * inf).sum()
        total += inf.sum()
    # The logit node (weight 1) draws from the top layer and its error.
    weighted += 1 - logit_error_share
    total += 1
    return GraphScores(replacement, float(weighted / total))
