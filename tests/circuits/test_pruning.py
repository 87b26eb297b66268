"""Selection rules on hand-made score vectors and graphs; influence pruning vs a dense version."""

import pytest
import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer, attribute
from rrm_plugin.circuits.pruning import (
    edge_rule,
    graph_scores,
    layered_adjacency,
    layered_influence,
    node_rule,
    normalise,
    prune_by_influence,
    prune_by_influence_grid,
    threshold_rule,
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
