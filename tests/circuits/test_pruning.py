"""Selection rules on hand-made score vectors and graphs; influence pruning vs a dense version."""

import pytest
import torch

from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.graph import Graph, GraphLayer
from rrm_plugin.circuits.edge_readers import layered_adjacency, layered_influence
from rrm_plugin.circuits.influence import graph_scores, prune_by_influence, prune_by_influence_grid
from rrm_plugin.circuits.pruning import (
    PAPER_SWEEP,
    THRESHOLD_SWEEP,
    edge_rule,
    node_rule,
    node_rule_on_graph,
    normalise,
    select,
    threshold_rule,
    topk_rule,
)

SCORES = torch.tensor([3.0, -1.0, 1.0, 0.0, 2.0])  # last slot: the error node


def test_normalise_clamps_or_takes_abs():
    torch.testing.assert_close(normalise(SCORES), torch.tensor([3, 0, 1, 0, 2]) / 6.0)
    torch.testing.assert_close(normalise(SCORES, "abs"), torch.tensor([3, 1, 1, 0, 2]) / 7.0)
    assert torch.equal(normalise(-SCORES.abs()), torch.zeros(5))  # nothing positive: all zero
    with pytest.raises(ValueError, match="unknown normalisation 'log'"):
        normalise(SCORES, "log")


def test_node_rule_keeps_floor_p_times_n_max():
    (mask,) = node_rule([SCORES], p=0.5, n_max=5)  # floor(2.5) = 2: latent 0 and the error
    assert mask.tolist() == [True, False, False, False, True]
    (mask,) = node_rule([SCORES], p=0.6, n_max=5, mode="abs")  # ties (|1| = |-1|) go to +1
    assert mask.tolist() == [True, False, True, False, True]
    assert not node_rule([SCORES], p=0.0)[0].any() and node_rule([SCORES], p=1.0)[0].all()
    # n_max is the largest layer: a smaller layer can be kept whole before a larger one.
    small, large = node_rule([SCORES[:2], SCORES], p=0.4, n_max=5)
    assert small.tolist() == [True, True] and large.sum() == 2
    batched = node_rule([torch.stack([SCORES, -SCORES])], p=0.2, n_max=5)[0]
    assert batched.tolist() == [[True, False, False, False, False],
                                [False, True, False, False, False]]
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        node_rule([SCORES], p=1.5)


def test_threshold_rule_adds_nodes_until_tau():
    # normalised, sorted: 0.5, 0.333, 0.167, 0, 0
    assert threshold_rule([SCORES], tau=0.5)[0].tolist() == [True, False, False, False, False]
    assert threshold_rule([SCORES], tau=0.6)[0].tolist() == [True, False, False, False, True]
    assert threshold_rule([SCORES], tau=0.9)[0].tolist() == [True, False, True, False, True]
    assert threshold_rule([SCORES], tau=1.0)[0].sum() >= 3
    assert not threshold_rule([SCORES], tau=0.0)[0].any()


def test_topk_rule_keeps_a_fraction_of_each_layers_own_size():
    small, large = torch.arange(9.0), torch.arange(17.0)  # slots incl. the error
    assert [int(m.sum()) for m in topk_rule([small, large], k=0.5)] == [4, 8]  # int(4.5), int(8.5)
    assert [int(m.sum()) for m in topk_rule([small, large], k=0.9)] == [8, 15]
    # topn counts from the largest layer instead: int(0.5 * 17) = 8 in both (the small one has 9).
    assert [int(m.sum()) for m in node_rule([small, large], p=0.5)] == [8, 8]
    # int() of the float product, as the authors: 0.29 * 100 = 28.999..., 28 slots.
    assert int(topk_rule([torch.arange(100.0)], k=0.29)[0].sum()) == 28
    (mask,) = topk_rule([SCORES], k=0.4)  # int(2.0): latent 0 and the error, as the node rule
    assert mask.tolist() == [True, False, False, False, True]
    batched = topk_rule([torch.stack([SCORES, -SCORES])], k=0.2)[0]
    assert batched.tolist() == [[True, False, False, False, False],
                                [False, True, False, False, False]]
    assert torch.equal(select([SCORES], criterion="topk", value=0.6)[0],
                       topk_rule([SCORES], k=0.6)[0])
    with pytest.raises(ValueError, match=r"k must be in \[0, 1\]"):
        topk_rule([SCORES], k=-0.1)
    with pytest.raises(ValueError, match="unknown criterion 'top'"):
        select([SCORES], criterion="top", value=0.5)


TIED = torch.tensor([0.0, -2.0, 1.0, -1.0, 0.0])  # clamped: one positive slot, four ties at zero


def test_ties_order_the_slots_of_equal_normalised_score():
    def kept(ties, count, **kw):
        return node_rule([TIED], p=count / 5, n_max=5, ties=ties, **kw)[0].nonzero()[:, 0].tolist()

    assert kept("raw", 3) == [0, 2, 4]  # zeros before negatives
    assert kept("raw", 4) == [0, 2, 3, 4]
    assert kept("index", 3) == [0, 1, 2]  # by slot index, whatever the raw score
    # Random: the positive slot always first, the ties in a seeded random order.
    draws = [tuple(kept("random", 3, generator=torch.Generator().manual_seed(s)))
             for s in range(20)]
    assert all(2 in d for d in draws) and len(set(draws)) > 1
    assert draws[0] == tuple(kept("random", 3, generator=torch.Generator().manual_seed(0)))
    many = torch.zeros(60)  # reproducible from the generator alone, not the global RNG
    orders = [node_rule([many], p=0.5, ties="random", generator=torch.Generator().manual_seed(s))[0]
              for s in (0, 0, 1)]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
    # Batched rows draw their own orders.
    rows = node_rule([TIED.expand(50, 5)], p=0.4, n_max=5, ties="random",
                     generator=torch.Generator().manual_seed(0))[0]
    assert rows[:, 2].all() and len({tuple(r.tolist()) for r in rows}) > 1
    # Threshold and topk rules take the same tie rule; a positive prefix is unaffected.
    assert threshold_rule([TIED], tau=0.5, ties="index")[0].nonzero()[:, 0].tolist() == [2]
    assert topk_rule([TIED], k=0.4, ties="index")[0].nonzero()[:, 0].tolist() == [0, 2]
    with pytest.raises(ValueError, match="unknown ties 'stable'"):
        node_rule([TIED], p=0.5, ties="stable")


def test_threshold_sweep_is_the_authors():
    assert THRESHOLD_SWEEP == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 0.9999,
                               1.0)
    assert PAPER_SWEEP == (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    for tau in THRESHOLD_SWEEP:
        assert torch.equal(select([SCORES], criterion="threshold", value=tau)[0],
                           threshold_rule([SCORES], tau=tau)[0])


def hand_graph() -> Graph:
    def layer(k, scores, error):
        n = len(scores)
        return GraphLayer(f"blocks.{k}.hook_resid_post", k, 3, torch.arange(n), None,
                          torch.ones(n), torch.ones(n), torch.tensor(scores), error)

    edges = torch.tensor([[1.0, 0.5], [4.0, -3.0], [-2.0, 2.0], [3.0, 0.0]])  # rows: 3 + error
    return Graph(layers=[layer(0, [1.5, 1.0, 0.0], 3.0), layer(1, [5.0, 1.0], 0.5)],
                 edges=[edges], target_class=0, metric="adjusted_logit", value=6.5,
                 logits=torch.zeros(3), n_tokens=5)


def test_edge_rule_follows_edges_into_selected_nodes():
    graph = hand_graph()  # n_max = d_sae + 1 = 4
    low, top = edge_rule(graph, p=0.25)  # one node per layer
    assert top.tolist() == [True, False, False]  # latent 0 (score 5)
    assert low.tolist() == [False, True, False, False]  # strongest edge into it: 4
    low, top = edge_rule(graph, p=0.5)  # two per layer: latents 0 and 1 above
    assert top.tolist() == [True, True, False]
    assert low.tolist() == [True, False, False, True]  # out-weights 1.5, 1, 0, 3 (error)
    low3, _ = edge_rule(graph, p=0.75)
    assert low3.tolist() == [True, True, False, True]
    low_t, top_t = edge_rule(graph, tau=0.7)
    assert top_t.tolist() == [True, False, False]  # 5 / 6.5 >= 0.7
    assert low_t.tolist() == [False, True, False, True]  # 4/8, then 3/8 reaches 0.7
    # topk: a fraction of each layer's own size, int(0.5 * 3) = 1 above, int(0.5 * 4) = 2 below.
    low_k, top_k = edge_rule(graph, k=0.5)
    assert top_k.tolist() == [True, False, False]
    assert low_k.tolist() == [False, True, False, True]  # edges into latent 0: 4, then 3 (error)
    assert [m.tolist() for m in node_rule_on_graph(graph, k=0.5)] == [
        [True, False, False, True], [True, False, False]]
    with pytest.raises(ValueError, match="give exactly one of"):
        edge_rule(graph, p=0.5, k=0.5)


def dense_adjacency(graph):
    """Full circuit-tracer adjacency [targets, sources], nodes: latents, errors, logit."""
    sizes = [len(layer) for layer in graph.layers]
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    n_feat, n_layers = sum(sizes), len(sizes)
    n = n_feat + n_layers + 1
    A = torch.zeros(n, n)
    for k, edge in enumerate(graph.edges):
        src = list(range(offsets[k], offsets[k] + sizes[k])) + [n_feat + k]
        tgt = list(range(offsets[k + 1], offsets[k + 1] + sizes[k + 1]))
        A[torch.tensor(tgt)[:, None], torch.tensor(src)[None, :]] = edge.T
    top = len(sizes) - 1
    src = list(range(offsets[top], offsets[top] + sizes[top])) + [n_feat + top]
    A[n - 1, torch.tensor(src)] = graph.logit_edges
    return A, offsets, sizes


def dense_influence(A):
    """w (A + A^2 + ...) for row-normalised |A|, w = 1 on the logit (the last node)."""
    norm = A.abs() / A.abs().sum(1, keepdim=True).clamp(min=1e-10)
    w = torch.zeros(len(A))
    w[-1] = 1.0
    current, total = w @ norm, torch.zeros(len(A))
    while current.abs().sum() > 0:
        total += current
        current = current @ norm
    return total, norm


def test_layered_influence_equals_dense_power_series(vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    A, offsets, sizes = dense_adjacency(graph)
    dense, norm = dense_influence(A)
    layered = layered_influence(layered_adjacency(graph))
    n_feat = sum(sizes)
    for k, inf in enumerate(layered):
        torch.testing.assert_close(inf[:-1], dense[offsets[k]:offsets[k] + sizes[k]])
        torch.testing.assert_close(inf[-1], dense[n_feat + k])
    # Scores, from the dense matrix as circuit-tracer defines them (inputs: bottom latents).
    errors = dense[n_feat:n_feat + len(sizes)].sum()
    inputs = dense[:sizes[0]].sum()
    non_error = 1 - norm[:, n_feat:n_feat + len(sizes)].sum(1)
    weight = dense.clone()
    weight[-1] += 1
    scores = graph_scores(graph)
    assert scores.replacement == pytest.approx(float(inputs / (inputs + errors)), rel=1e-5)
    assert scores.completeness == pytest.approx(
        float((non_error * weight).sum() / weight.sum()), rel=1e-5)
    assert 0 < scores.replacement < 1 and 0 < scores.completeness < 1


def test_influence_pruning_keeps_a_connected_circuit(vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    result = prune_by_influence(graph, node_threshold=0.8, edge_threshold=0.98)
    total = torch.cat(result.influence)
    kept_influence = torch.cat([i[m] for i, m in zip(result.influence, result.node_masks,
                                                     strict=True)]).sum()
    assert 0 < kept_influence <= total.sum()
    top = len(graph.layers) - 1
    for k, nodes in enumerate(result.node_masks):
        out = result.logit_edge_mask if k == top else result.edge_masks[k].any(1)
        assert not (nodes & ~out).any()  # no dangling node: every kept node has an out-edge
        if k > 0:
            assert not (nodes[:-1] & ~result.edge_masks[k - 1].any(0)).any()  # and an in-edge
    for k, m in enumerate(result.edge_masks):
        assert not (m & ~result.node_masks[k][:, None]).any()
    loose = prune_by_influence(graph, node_threshold=1.0, edge_threshold=1.0)
    assert sum(int(m.sum()) for m in loose.node_masks) >= sum(
        int(m.sum()) for m in result.node_masks)
    with pytest.raises(ValueError, match=r"node_threshold must be in \[0, 1\]"):
        prune_by_influence(graph, node_threshold=2.0)


def test_influence_grid_positions_do_not_leak_into_each_other(vit, saes, images, baselines):
    # The grid shares the influence and edge sort across positions; each position must still be
    # the circuit that pruning at that pair alone gives (masks are not edited in place).
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    nodes, edges = [1.0, 0.5, 0.8], [0.5, 1.0, 0.9]
    grid = prune_by_influence_grid(graph, node_thresholds=nodes, edge_thresholds=edges)
    counts = set()
    for node_t in reversed(nodes):
        for edge_t in reversed(edges):
            alone = prune_by_influence(graph, node_threshold=node_t, edge_threshold=edge_t)
            shared = grid[(node_t, edge_t)]
            for a, b in zip(alone.node_masks + alone.edge_masks + [alone.logit_edge_mask],
                            shared.node_masks + shared.edge_masks + [shared.logit_edge_mask],
                            strict=True):
                assert torch.equal(a, b), (node_t, edge_t)
            counts.add(sum(int(m.sum()) for m in shared.node_masks))
    assert len(counts) >= 3  # the positions really differ


def test_error_free_graph_scores_one():
    graph = hand_graph()
    graph.edges[0][-1] = 0.0
    graph.layers[0].error_score = 0.0
    graph.layers[1].error_score = 0.0
    assert graph_scores(graph).replacement == pytest.approx(1.0)
    assert graph_scores(graph).completeness == pytest.approx(1.0)


# ---- known answers on small hand graphs (issue 13) -------------------------------------------


def _layer(k, d_sae, features, scores, error):
    n = len(features)
    return GraphLayer(f"blocks.{k}.hook_resid_post", k, d_sae, torch.tensor(features), None,
                      torch.ones(n), torch.ones(n), torch.tensor(scores), error)


def influence_graph() -> Graph:
    """Two layers of two latents; every weight below is exact in binary. By hand (row-normalised
    |A|, influence w (A + A^2 + ...)):

    logit row |5, 2, 1| / 8           -> layer 1 influence (b0, b1, err1) = (.625, .25, .125)
    into b0: |2, 1, 1| / 4, into b1: |1, -2, 1| / 4
    layer 0 influence: a0 = .625 * .5 + .25 * .25 = .375, a1 = .625 * .25 + .25 * .5 = .28125,
                       err0 = .625 * .25 + .25 * .25 = .21875
    All six sorted: .625, .375, .28125, .25, .21875, .125 (total 1.875); cumulative shares
    .333, .533, .683, .817, .933, 1.
    """
    edges = torch.tensor([[2.0, 1.0], [1.0, -2.0], [1.0, 1.0]])  # rows a0, a1, err0; cols b0, b1
    return Graph(layers=[_layer(0, 2, [0, 1], [3.0, -1.0], 2.0),
                         _layer(1, 2, [0, 1], [5.0, 2.0], 1.0)],
                 edges=[edges], target_class=0, metric="adjusted_logit", value=8.0,
                 logits=torch.zeros(3), n_tokens=5)


def _masks(result):
    return ([m.tolist() for m in result.node_masks], [m.tolist() for m in result.edge_masks],
            result.logit_edge_mask.tolist())


def test_influence_known_answer():
    influence = layered_influence(layered_adjacency(influence_graph()))
    assert influence[1].tolist() == [0.625, 0.25, 0.125]
    assert influence[0].tolist() == [0.375, 0.28125, 0.21875]


T, F = True, False
# Edge scores after node pruning: renormalised weight x the target's pruned influence (in the
# comments, x/21 or x/28 of these scores; the logit edges score the top nodes' influence).
INFLUENCE_CASES = [
    # node .5: the smallest influence reaching .5 of the total is .375 -> a0, b0. Scores: a0->b0 1,
    # logit b0 1: any edge threshold keeps both.
    (0.5, 0.98, [[T, F, F], [T, F, F]], [[T, F], [F, F], [F, F]], [T, F, F]),
    # node .6: cut .28125 -> a0, a1, b0. Scores a0->b0 2/3, a1->b0 1/3, logit 1 (cum .5, .83, 1).
    (0.6, 0.98, [[T, T, F], [T, F, F]], [[T, F], [T, F], [F, F]], [T, F, F]),
    # edge .8: cut 2/3 drops a1 -> b0, and with it a1 (no outgoing edge).
    (0.6, 0.8, [[T, F, F], [T, F, F]], [[T, F], [F, F], [F, F]], [T, F, F]),
    # edge .5: cut 1 keeps only the logit edge; a0 loses its out-edge, then b0 its in-edge.
    (0.6, 0.5, [[F, F, F], [F, F, F]], [[F, F], [F, F], [F, F]], [F, F, F]),
    # node .7 and .8 (the default): cut .25 -> both latents of both layers, no error. Scores (/21):
    # a0->b0 10, a1->b0 5, a0->b1 2, a1->b1 4, logit 15, 6 (cum /42: 15, 25, 31, 36, 40, 42).
    (0.7, 0.98, [[T, T, F], [T, T, F]], [[T, T], [T, T], [F, F]], [T, T, F]),
    (0.8, 0.98, [[T, T, F], [T, T, F]], [[T, T], [T, T], [F, F]], [T, T, F]),
    # edge .9: cut 4/21 drops a0 -> b1 only.
    (0.8, 0.9, [[T, T, F], [T, T, F]], [[T, F], [T, T], [F, F]], [T, T, F]),
    # edge .8: cut 5/21 drops both edges into b1, so b1 and its logit edge go.
    (0.8, 0.8, [[T, T, F], [T, F, F]], [[T, F], [T, F], [F, F]], [T, F, F]),
    # edge .7: cut 6/21 also drops a1 -> b0 (5/21), then a1.
    (0.8, 0.7, [[T, F, F], [T, F, F]], [[T, F], [F, F], [F, F]], [T, F, F]),
    # node .85: cut .21875 adds err0. Scores (/28): into b0 10, 5, 5; into b1 2, 4, 2; logit 20,
    # 8 (cum /56: 20, 30, 38, 43, 48, 52, 54, 56). Edge .98: cut 2/28, every edge (ties kept).
    (0.85, 0.98, [[T, T, T], [T, T, F]], [[T, T], [T, T], [T, T]], [T, T, F]),
    # edge .9: cut 4/28 drops the two 2/28 edges into b1.
    (0.85, 0.9, [[T, T, T], [T, T, F]], [[T, F], [T, T], [T, F]], [T, T, F]),
    # edge .8: cut 5/28 keeps the tie a1->b0 = err0->b0 = 5/28 and drops everything into b1.
    (0.85, 0.8, [[T, T, T], [T, F, F]], [[T, F], [T, F], [T, F]], [T, F, F]),
]


@pytest.mark.parametrize(("node_t", "edge_t", "nodes", "edges", "logit"), INFLUENCE_CASES)
def test_influence_pruning_known_answers(node_t, edge_t, nodes, edges, logit):
    result = prune_by_influence(influence_graph(), node_threshold=node_t, edge_threshold=edge_t)
    assert _masks(result) == (nodes, [edges], logit)


def test_influence_grid_known_answers():
    node_ts = sorted({c[0] for c in INFLUENCE_CASES})
    edge_ts = sorted({c[1] for c in INFLUENCE_CASES})
    grid = prune_by_influence_grid(influence_graph(), node_thresholds=node_ts,
                                   edge_thresholds=edge_ts)
    for node_t, edge_t, nodes, edges, logit in INFLUENCE_CASES:
        assert _masks(grid[(node_t, edge_t)]) == (nodes, [edges], logit), (node_t, edge_t)


def test_influence_pruning_defaults_are_circuit_tracers():
    # 0.8 / 0.98: the case above, which differs from its neighbours on this graph.
    assert _masks(prune_by_influence(influence_graph())) == (
        [[T, T, F], [T, T, F]], [[[T, T], [T, T], [F, F]]], [T, T, F])


def sparse_graph() -> Graph:
    """d_sae = 4 per layer; the graph holds latents 0, 2 below and 1, 3 above."""
    edges = torch.tensor([[1.5, -0.5], [-0.25, -0.25], [0.5, 0.0]])  # rows f0, f2, err
    return Graph(layers=[_layer(0, 4, [0, 2], [1.0, -0.5], 0.5),
                         _layer(1, 4, [1, 3], [2.0, -1.0], 0.25)],
                 edges=[edges], target_class=0, metric="adjusted_logit", value=2.0,
                 logits=torch.zeros(3), n_tokens=5)


def test_edge_rule_dense_ranks_every_latent():
    graph = sparse_graph()  # n_max = 4 + 1
    # Dense top layer: slots (0, 2, 0, -1, .25). p = .4: 2 slots, latent 1 and the error.
    # Edges into latent 1 by source slot: (1.5, 0, -.25, 0, .5): latent 0 and the error.
    low, top = edge_rule(graph, p=0.4, dense=True)
    assert top.tolist() == [False, True, False, False, True]
    assert low.tolist() == [True, False, False, False, True]
    # p = .6: 3 slots; the third is a zero-score tie, latent 0 (outside the graph) before the
    # negative latent 3. Below, the same edges, then the tie of zeros: latent 1 (raw 0).
    low, top = edge_rule(graph, p=0.6, dense=True)
    assert top.tolist() == [True, True, False, False, True]
    assert low.tolist() == [True, True, False, False, True]
    # Not dense: masks over the graph's nodes only; at p = .6 all three slots of each layer.
    low, top = edge_rule(graph, p=0.6)
    assert top.tolist() == [True, True, True] and low.tolist() == [True, True, True]
    low, top = edge_rule(graph, p=0.4)
    assert top.tolist() == [True, False, True] and low.tolist() == [True, False, True]
