"""How influence pruning reads a graph's edges: dense matrices, or the stored entries of sparse
ones (token graphs built with `EngineConfig(token_top_k=...)`).

`rrm_plugin.circuits.influence` runs one algorithm (circuit-tracer's row-normalised |A|,
influence by layers, node and edge cuts, dangling nodes dropped) over either reader. The sparse
reader works on each edge matrix's stored entries: memory and time grow with the stored edges, so
a ViT-B token graph of 10^5 to 10^6 nodes prunes where its dense adjacency (nodes^2) would not
fit; its edge masks are sparse boolean COO tensors with the same indices as the graph's
(coalesced) edge matrices. Each reader keeps its own arithmetic (matrix products for dense
edges, index sums for sparse ones), so results are exactly those of the two former code paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rrm_plugin.attribution.graph import Graph


class Adjacency(NamedTuple):
    """Row-normalised |edges|, per adjacent pair (dense: `[targets of k+1, sources of k]`; sparse:
    one weight per stored entry), and the normalised logit edges."""

    blocks: list[Tensor]
    logit: Float[Tensor, " n_top_plus_error"]


def _row_normalise(matrix: Tensor) -> Tensor:
    normalised = matrix.abs()
    return normalised / normalised.sum(-1, keepdim=True).clamp(min=1e-10)


def layered_adjacency(graph: Graph, edge_masks: Sequence[Tensor] | None = None,
                      logit_mask: Tensor | None = None) -> Adjacency:
    """Row-normalised |edges| of a dense graph: `blocks[k]` is [targets of layer k+1, sources of
    k]; with masks, of the masked edges."""
    graph.require_dense_edges("layered_adjacency")
    edges = [e if edge_masks is None else e * edge_masks[k] for k, e in enumerate(graph.edges)]
    logit = graph.logit_edges if logit_mask is None else graph.logit_edges * logit_mask
    return Adjacency([_row_normalise(e.T) for e in edges], _row_normalise(logit[None])[0])


def layered_influence(adjacency: Adjacency) -> list[Float[Tensor, " n_plus_error"]]:
    """Influence on the logit of every node (`w (A + A^2 + ...)` with w = 1 on the logit)."""
    influence = [torch.zeros(0)] * (len(adjacency.blocks) + 1)
    influence[-1] = adjacency.logit
    for k in range(len(adjacency.blocks) - 1, -1, -1):
        # Only latent nodes pass influence down; error nodes are leaves.
        influence[k] = influence[k + 1][:-1] @ adjacency.blocks[k]
    return influence


class DenseEdges:
    """Edge reader over dense edge matrices `[n_src + 1, n_tgt]` (last row: the error node)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def adjacency(self, edge_masks: Sequence[Tensor] | None = None,
                  logit_mask: Tensor | None = None) -> Adjacency:
        return layered_adjacency(self.graph, edge_masks, logit_mask)

    def influence(self, adjacency: Adjacency) -> list[Tensor]:
        return layered_influence(adjacency)

    def between(self, nodes: Sequence[Tensor]) -> list[Bool[Tensor, "n_src_plus_error n_tgt"]]:
        """Per pair, the edges whose source and target are both in `nodes`."""
        return [nodes[k][:, None] & nodes[k + 1][None, :-1] for k in range(len(nodes) - 1)]

    def edge_scores(self, adjacency: Adjacency, influence: Sequence[Tensor]) -> list[Tensor]:
        """Normalised weight times the target's influence, per edge."""
        return [adjacency.blocks[k].T * influence[k + 1][None, :-1]
                for k in range(len(adjacency.blocks))]

    def reached_targets(self, k: int, edge_mask: Tensor, sources: Tensor) -> Tensor:
        """Latents of layer k+1 with a masked edge from one of `sources` (layer k)."""
        return edge_mask[sources].any(0)

    def reaching_sources(self, k: int, edge_mask: Tensor, targets: Tensor) -> Tensor:
        """Nodes of layer k with a masked edge into one of `targets` (latents of layer k+1)."""
        return edge_mask[:, targets].any(1)

    def error_shares(self, adjacency: Adjacency) -> list[Tensor]:
        """Each latent's share of normalised incoming weight from its sources' error node."""
        return [block[:, -1] for block in adjacency.blocks]

    def edge_masks(self, masks: Sequence[Tensor]) -> list[Tensor]:
        return list(masks)


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


def _normalise(values: Tensor, cols: Tensor, n_tgt: int) -> Tensor:
    magnitude = values.abs()
    total = torch.zeros(n_tgt, dtype=magnitude.dtype).index_add_(0, cols, magnitude)
    return magnitude / total[cols].clamp(min=1e-10)


class SparseEdges:
    """Edge reader over the stored entries of sparse edge matrices."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.pairs = entries(graph)

    def adjacency(self, edge_masks: Sequence[Tensor] | None = None,
                  logit_mask: Tensor | None = None) -> Adjacency:
        """Per pair, each stored entry's |weight| divided by its target's total (circuit-tracer's
        row normalisation of A, whose rows are targets)."""
        weights = []
        for k, pair in enumerate(self.pairs):
            values = pair.values if edge_masks is None else pair.values * edge_masks[k]
            weights.append(_normalise(values, pair.cols, pair.shape[1]))
        graph = self.graph
        logit = graph.logit_edges if logit_mask is None else graph.logit_edges * logit_mask
        magnitude = logit.abs()
        return Adjacency(weights, magnitude / magnitude.sum().clamp(min=1e-10))

    def influence(self, adjacency: Adjacency) -> list[Float[Tensor, " n_plus_error"]]:
        """Influence on the logit of every node; error nodes are leaves (they pass nothing down)."""
        influence = [torch.zeros(0)] * (len(self.pairs) + 1)
        influence[-1] = adjacency.logit
        for k in range(len(self.pairs) - 1, -1, -1):
            pair, weight = self.pairs[k], adjacency.blocks[k]
            carried = influence[k + 1][pair.cols] * weight  # columns are latents only
            influence[k] = torch.zeros(pair.shape[0], dtype=carried.dtype).index_add_(
                0, pair.rows, carried)
        return influence

    def between(self, nodes: Sequence[Tensor]) -> list[Bool[Tensor, " nnz"]]:
        return [nodes[k][p.rows] & nodes[k + 1][p.cols] for k, p in enumerate(self.pairs)]

    def edge_scores(self, adjacency: Adjacency, influence: Sequence[Tensor]) -> list[Tensor]:
        return [adjacency.blocks[k] * influence[k + 1][p.cols] for k, p in enumerate(self.pairs)]

    def sources_with(self, k: int, edge_mask: Tensor) -> Tensor:
        """Nodes of layer k (error last) with a masked entry into layer k+1."""
        reached = torch.zeros(self.pairs[k].shape[0], dtype=torch.bool)
        reached[self.pairs[k].rows[edge_mask]] = True
        return reached

    def targets_with(self, k: int, edge_mask: Tensor) -> Tensor:
        """Latents of layer k+1 with a masked entry from layer k."""
        reached = torch.zeros(self.pairs[k].shape[1], dtype=torch.bool)
        reached[self.pairs[k].cols[edge_mask]] = True
        return reached

    def reached_targets(self, k: int, edge_mask: Tensor, sources: Tensor) -> Tensor:
        return self.targets_with(k, edge_mask & sources[self.pairs[k].rows])

    def reaching_sources(self, k: int, edge_mask: Tensor, targets: Tensor) -> Tensor:
        return self.sources_with(k, edge_mask & targets[self.pairs[k].cols])

    def error_shares(self, adjacency: Adjacency) -> list[Tensor]:
        shares = []
        for pair, weight in zip(self.pairs, adjacency.blocks, strict=True):
            from_error = pair.rows == pair.shape[0] - 1
            shares.append(torch.zeros(pair.shape[1], dtype=weight.dtype).index_add_(
                0, pair.cols[from_error], weight[from_error]))
        return shares

    def edge_masks(self, masks: Sequence[Tensor]) -> list[Tensor]:
        """Entry masks as sparse boolean matrices with the edge matrices' indices."""
        return [torch.sparse_coo_tensor(torch.stack([p.rows, p.cols]), m, p.shape,
                                        check_invariants=False).coalesce()
                for p, m in zip(self.pairs, masks, strict=True)]


def edge_reader(graph: Graph) -> DenseEdges | SparseEdges:
    return SparseEdges(graph) if graph.sparse_edges else DenseEdges(graph)
