"""circuit-tracer's influence pruning on sparse graphs (token graphs built with
`EngineConfig(token_top_k=...)`).

The same steps as `pruning.prune_by_influence_grid` (row-normalised |A|, influence by layers,
node and edge cuts, dangling nodes dropped), taken over each edge matrix's stored entries instead
of dense matrices: memory and time grow with the stored edges, so a ViT-B token graph of 10^5 to
10^6 nodes prunes where its dense adjacency (nodes^2) would not fit. Edge masks are sparse boolean
COO tensors with the same indices as the graph's (coalesced) edge matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rrm_plugin.attribution.graph import Graph

if TYPE_CHECKING:  # pruning imports this module lazily; no import cycle at run time
    from rrm_plugin.circuits.pruning import GraphScores, PruneResult


class Entries(NamedTuple):
    """The stored entries of one edge matrix `[n_src + 1, n_tgt]` (last row: the error node)."""

    rows: Int[Tensor, " nnz"]
    cols: Int[Tensor, " nnz"]
    values: Float[Tensor, " nnz"]
    shape: tuple[int, int]


def entries(graph: Graph) -> list[Entries]:
    out = []
    for edge in graph.edges:
        edge = edge.coalesce() if edge.is_sparse else edge.to_sparse().coalesce()
        rows, cols = edge.indices()
        out.append(Entries(rows, cols, edge.values(), tuple(edge.shape)))
    return out


class SparseAdjacency(NamedTuple):
    """Per pair, each stored entry's |weight| divided by its target's total (circuit-tracer's
    row normalisation of A, whose rows are targets), and the normalised logit edges."""

    weights: list[Float[Tensor, " nnz"]]
    logit: Float[Tensor, " n_top_plus_error"]


def _normalise(values: Tensor, cols: Tensor, n_tgt: int) -> Tensor:
    magnitude = values.abs()
    total = torch.zeros(n_tgt, dtype=magnitude.dtype).index_add_(0, cols, magnitude)
    return magnitude / total[cols].clamp(min=1e-10)


def sparse_adjacency(
    graph: Graph, pairs: Sequence[Entries], entry_masks: Sequence[Tensor] | None = None,
    logit_mask: Tensor | None = None,
) -> SparseAdjacency:
    weights = []
    for k, pair in enumerate(pairs):
        values = pair.values if entry_masks is None else pair.values * entry_masks[k]
        weights.append(_normalise(values, pair.cols, pair.shape[1]))
    logit = graph.logit_edges if logit_mask is None else graph.logit_edges * logit_mask
    magnitude = logit.abs()
    return SparseAdjacency(weights, magnitude / magnitude.sum().clamp(min=1e-10))


def sparse_influence(
    pairs: Sequence[Entries], adjacency: SparseAdjacency
) -> list[Float[Tensor, " n_plus_error"]]:
    """Influence on the logit of every node; error nodes are leaves (they pass nothing down)."""
    influence = [torch.zeros(0)] * (len(pairs) + 1)
    influence[-1] = adjacency.logit
    for k in range(len(pairs) - 1, -1, -1):
        pair, weight = pairs[k], adjacency.weights[k]
        carried = influence[k + 1][pair.cols] * weight  # columns are latents only
        influence[k] = torch.zeros(pair.shape[0], dtype=carried.dtype).index_add_(
            0, pair.rows, carried)
    return influence


def _as_sparse(pair: Entries, mask: Bool[Tensor, " nnz"]) -> Tensor:
    return torch.sparse_coo_tensor(torch.stack([pair.rows, pair.cols]), mask, pair.shape,
                                   check_invariants=False).coalesce()


def prune_by_influence_grid(
    graph: Graph, *, node_thresholds: Sequence[float], edge_thresholds: Sequence[float]
) -> dict[tuple[float, float], PruneResult]:
    """`pruning.prune_by_influence_grid` for sparse edge matrices (see the module docstring)."""
    from rrm_plugin.circuits.pruning import PruneResult, _check_fraction, _cut_at, _sort_scores

    for t in node_thresholds:
        _check_fraction("node_threshold", t)
    for t in edge_thresholds:
        _check_fraction("edge_threshold", t)
    pairs = entries(graph)
    influence = sparse_influence(pairs, sparse_adjacency(graph, pairs))
    sorted_nodes = _sort_scores(torch.cat(influence))
    results = {}
    for node_t in node_thresholds:
        cut = _cut_at(sorted_nodes, node_t)
        nodes = [inf >= cut for inf in influence]
        between = [nodes[k][p.rows] & nodes[k + 1][p.cols] for k, p in enumerate(pairs)]
        pruned = sparse_adjacency(graph, pairs, [m.float() for m in between], nodes[-1].float())
        pruned_influence = sparse_influence(pairs, pruned)
        # Edge score: normalised weight times the target's influence (+1 for the logit target).
        scores = [pruned.weights[k] * pruned_influence[k + 1][p.cols]
                  for k, p in enumerate(pairs)]
        sorted_edges = _sort_scores(torch.cat([*scores, pruned.logit]))
        for edge_t in edge_thresholds:
            edge_cut = _cut_at(sorted_edges, edge_t)
            edge_masks = [(s >= edge_cut) & m for s, m in zip(scores, between, strict=True)]
            logit_mask = (pruned.logit >= edge_cut) & nodes[-1]
            kept_nodes, kept_edges, kept_logit = _drop_unconnected(
                pairs, [n.clone() for n in nodes], edge_masks, logit_mask)
            results[(node_t, edge_t)] = PruneResult(
                kept_nodes, [_as_sparse(p, m) for p, m in zip(pairs, kept_edges, strict=True)],
                kept_logit, influence)
    return results


def _drop_unconnected(
    pairs: Sequence[Entries], nodes: list[Tensor], edge_masks: list[Tensor], logit_mask: Tensor
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Drop nodes without an outgoing kept edge (or an incoming one above the bottom layer) and
    the edges they ended, until nothing changes."""
    changed = True
    while changed:
        old = [n.clone() for n in nodes]
        for k in range(len(nodes)):
            if k == len(nodes) - 1:
                outgoing = logit_mask
            else:
                outgoing = torch.zeros_like(nodes[k])
                outgoing[pairs[k].rows[edge_masks[k]]] = True
            nodes[k] &= outgoing
            if k > 0:
                incoming = torch.zeros_like(nodes[k][:-1])
                incoming[pairs[k - 1].cols[edge_masks[k - 1]]] = True
                nodes[k][:-1] &= incoming
        edge_masks = [m & nodes[k][p.rows] & nodes[k + 1][p.cols]
                      for k, (p, m) in enumerate(zip(pairs, edge_masks, strict=True))]
        logit_mask &= nodes[-1]
        changed = any(not torch.equal(a, b) for a, b in zip(old, nodes, strict=True))
    return nodes, edge_masks, logit_mask


def graph_scores(graph: Graph) -> GraphScores:
    """Replacement and completeness scores (as `pruning.graph_scores`) of a sparse graph."""
    from rrm_plugin.circuits.pruning import circuit_tracer_scores

    pairs = entries(graph)
    adjacency = sparse_adjacency(graph, pairs)
    error_shares = []
    for pair, weight in zip(pairs, adjacency.weights, strict=True):
        from_error = pair.rows == pair.shape[0] - 1
        error_shares.append(torch.zeros(pair.shape[1], dtype=weight.dtype).index_add_(
            0, pair.cols[from_error], weight[from_error]))
    return circuit_tracer_scores(sparse_influence(pairs, adjacency), error_shares,
                                 adjacency.logit[-1])
