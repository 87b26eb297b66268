"""The influence grid's removal of unconnected nodes: two passes (up, down) against
circuit-tracer's repeated sweeps, written here as the oracle, on random layered graphs; and the
grid against pruning each threshold pair on its own."""

import pytest
import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer
from rrm_plugin.circuits.edge_readers import edge_reader
from rrm_plugin.circuits.influence import (
    _drop_unconnected,
    prune_by_influence,
    prune_by_influence_grid,
)


def random_graph(seed: int, *, sizes=(5, 7, 6, 8, 4), zeros: float = 0.6,
                 sparse: bool = False) -> Graph:
    """Layered graph with many zero edges (so pruning leaves dangling nodes) and heavy tails."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for k, n in enumerate(sizes):
        scores = torch.randn(n, generator=g)
        if k == len(sizes) - 1:
            scores[0] = 0  # a zero logit edge: its top node must lose everything below
        layers.append(GraphLayer(f"blocks.{k}.hook_resid_post", k, 64,
                                 torch.randperm(64, generator=g)[:n], None, scores.abs(),
                                 scores.abs(), scores, float(torch.randn(1, generator=g))))
    edges = []
    for k in range(len(sizes) - 1):
        e = torch.randn(sizes[k] + 1, sizes[k + 1], generator=g) ** 3
        e[torch.rand(e.shape, generator=g) < zeros] = 0
        edges.append(e.to_sparse().coalesce() if sparse else e)
    logits = torch.randn(10, generator=g)
    return Graph(layers, edges, target_class=0, metric="logit", value=float(logits[0]),
                 logits=logits, granularity="feature", n_tokens=5)


def sweeps(nodes, edge_masks, logit_mask):
    """circuit-tracer's removal, on dense masks: drop nodes without an outgoing kept edge (or an
    incoming one, for latents above the bottom layer) and their edges until nothing changes."""
    nodes, edge_masks, logit_mask = ([n.clone() for n in nodes], [m.clone() for m in edge_masks],
                                     logit_mask.clone())
    while True:
        old = [n.clone() for n in nodes]
        for k in range(len(nodes)):
            nodes[k] &= logit_mask if k == len(nodes) - 1 else edge_masks[k].any(1)
            if k > 0:
                nodes[k][:-1] &= edge_masks[k - 1].any(0)
        edge_masks = [m & nodes[k][:, None] & nodes[k + 1][None, :-1]
                      for k, m in enumerate(edge_masks)]
        logit_mask &= nodes[-1]
        if all(torch.equal(a, b) for a, b in zip(old, nodes, strict=True)):
            return nodes, edge_masks, logit_mask


@pytest.mark.parametrize("sparse", [False, True])
def test_two_passes_equal_the_repeated_sweeps_on_random_masks(sparse):
    changed = 0
    for seed in range(60):
        graph = random_graph(seed, sparse=sparse)
        edges = edge_reader(graph)
        g = torch.Generator().manual_seed(1000 + seed)
        nodes = [torch.rand(len(lay) + 1, generator=g) < 0.7 for lay in graph.layers]
        dense_edges = [e.to_dense() != 0 for e in graph.edges]
        density = float(torch.rand(1, generator=g)) * 0.8 + 0.1
        dense_masks = [(torch.rand(e.shape, generator=g) < density) & e for e in dense_edges]
        logit = (torch.rand(len(nodes[-1]), generator=g) < 0.7) & nodes[-1]
        # The reader's own mask layout: dense matrices, or one flag per stored entry.
        masks = (dense_masks if not sparse else
                 [m[p.rows, p.cols] for m, p in zip(dense_masks, edges.pairs, strict=True)])
        got_nodes, got_edges, got_logit = _drop_unconnected(edges, nodes, masks, logit.clone())
        want_nodes, want_edges, want_logit = sweeps(nodes, dense_masks, logit)
        assert [n.tolist() for n in got_nodes] == [n.tolist() for n in want_nodes], seed
        got_dense = [m.to_dense() for m in edges.edge_masks(got_edges)]
        assert [m.tolist() for m in got_dense] == [m.tolist() for m in want_edges], seed
        assert torch.equal(got_logit, want_logit), seed
        changed += sum(int(a.sum() - b.sum()) for a, b in zip(nodes, want_nodes, strict=True))
    assert changed > 60  # the cases do drop nodes (on average more than one per graph)


@pytest.mark.parametrize("sparse", [False, True])
def test_grid_equals_pruning_each_threshold_pair_alone(sparse):
    node_ts = [0.05, 0.3, 0.5, 0.8, 0.95, 1.0]
    edge_ts = [0.5, 0.8, 0.98, 1.0]
    sizes_seen = set()
    for seed in range(12):
        graph = random_graph(seed, sizes=(6, 9, 8, 10, 7, 5), zeros=0.5, sparse=sparse)
        grid = prune_by_influence_grid(graph, node_thresholds=node_ts, edge_thresholds=edge_ts)
        for node_t in node_ts:
            for edge_t in edge_ts:
                alone = prune_by_influence(graph, node_threshold=node_t, edge_threshold=edge_t)
                got = grid[(node_t, edge_t)]
                for a, b in zip(got.node_masks, alone.node_masks, strict=True):
                    assert torch.equal(a, b), (seed, node_t, edge_t)
                for a, b in zip(got.edge_masks, alone.edge_masks, strict=True):
                    assert torch.equal(a.to_dense(), b.to_dense()), (seed, node_t, edge_t)
                assert torch.equal(got.logit_edge_mask, alone.logit_edge_mask)
                # Every kept node is on a path to the logit: oracle-checked above; here, that
                # the position is the sweeps' fixed point of its own masks.
                dense = [m.to_dense() for m in got.edge_masks]
                fixed = sweeps(got.node_masks, dense, got.logit_edge_mask)
                assert [n.tolist() for n in fixed[0]] == [n.tolist() for n in got.node_masks]
                sizes_seen.add(sum(int(m.sum()) for m in got.node_masks))
    assert len(sizes_seen) > 10  # the grid spans many different circuits
