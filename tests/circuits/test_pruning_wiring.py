"""The selection rules pass `mode`, `ties` and `generator` through every wrapper; token-graph
sizes; known replacement score; exact messages. Small hand-made score vectors and graphs."""

import pytest
import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer
from rrm_plugin.circuits.influence import graph_scores, prune_by_influence_grid
from rrm_plugin.circuits.pruning import (
    edge_rule,
    graph_n_max,
    node_rule_on_graph,
    select,
    threshold_rule,
)

CRITERIA = [("topn", 0.5), ("topk", 0.5), ("threshold", 0.5)]


def _layer(k, features, scores, error_score, d_sae=8, tokens=None):
    n = len(features)
    return GraphLayer(f"blocks.{k}.hook_resid_post", k, d_sae, torch.tensor(features),
                      None if tokens is None else torch.tensor(tokens), torch.ones(n),
                      torch.ones(n), torch.tensor(scores, dtype=torch.float32), error_score)


def _graph(layers, edges, **kw):
    return Graph(layers, edges, target_class=0, metric="logit", value=1.0,
                 logits=torch.tensor([1.0, 0.0]), **kw)


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("criterion", "value"), CRITERIA)
def test_random_ties_follow_the_generator_not_the_global_rng(criterion, value):
    # 40 equal scores: each criterion keeps 20 of them, which ones only the tie order decides.
    scores = [torch.ones(40)]
    torch.manual_seed(1)
    a = select(scores, criterion=criterion, value=value, ties="random", generator=_seeded(7))[0]
    torch.manual_seed(2)
    b = select(scores, criterion=criterion, value=value, ties="random", generator=_seeded(7))[0]
    assert int(a.sum()) == 20 and torch.equal(a, b)


def test_random_ties_through_the_graph_rules():
    n = 30
    layers = [_layer(0, list(range(n)), [1.0] * n, 1.0, d_sae=n),
              _layer(1, list(range(n)), [1.0] * n, 1.0, d_sae=n)]
    graph = _graph(layers, [torch.ones(n + 1, n)])
    for rule in (node_rule_on_graph, edge_rule):
        for kw in ({"p": 0.5}, {"k": 0.5}, {"tau": 0.5}):
            torch.manual_seed(1)
            a = rule(graph, ties="random", generator=_seeded(3), **kw)
            torch.manual_seed(2)
            b = rule(graph, ties="random", generator=_seeded(3), **kw)
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), (rule, kw)
            assert 0 < int(a[0].sum()) < n + 1


@pytest.mark.parametrize(("criterion", "value"), [("topn", 0.4), ("topk", 0.4),
                                                  ("threshold", 0.6)])
def test_mode_and_ties_are_passed_on(criterion, value):
    # |-6| is the largest score: kept with mode="abs", clamped to 0 (and so last) otherwise.
    # abs: (6, 4, 1, .5, .5) / 12, running total .5, .83: tau .6 keeps two slots.
    scores = [torch.tensor([-6.0, 4.0, 1.0, 0.5, 0.5])]
    kept = select(scores, criterion=criterion, value=value, mode="abs")[0]
    assert kept.tolist() == [True, True, False, False, False]
    kept = select(scores, criterion=criterion, value=value)[0]
    assert kept.tolist()[:2] == [False, True]
    # Clamped ties at 0: "raw" puts 0 before -1, "index" slot order (-1 first).
    tied = [torch.tensor([-1.0, 0.0, 3.0, 0.0, 0.0])]
    if criterion != "threshold":
        value = 0.4  # two slots of five
        raw = select(tied, criterion=criterion, value=value)[0]
        index = select(tied, criterion=criterion, value=value, ties="index")[0]
        assert raw.tolist() == [False, True, True, False, False]
        assert index.tolist() == [True, False, True, False, False]


def test_graph_rules_pass_mode_and_ties():
    layers = [_layer(0, [0, 1], [1.0, 1.0], 1.0, d_sae=4),
              _layer(1, [0, 1, 2, 3], [-6.0, 4.0, 1.0, 0.5], 0.5, d_sae=4)]
    # Rows L0/F0, L0/F1, L0/error; source F0 sends +3 and -3 (sums to 0 unless |.| first).
    edges = [torch.tensor([[3.0, -3.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])]
    graph = _graph(layers, edges)
    # n_max = 4 + 1 = 5; p = 0.4 keeps two slots per layer.
    assert node_rule_on_graph(graph, p=0.4, mode="abs")[1].tolist() == [True, True, False, False,
                                                                         False]
    assert node_rule_on_graph(graph, p=0.4)[1].tolist() == [False, True, True, False, False]
    masks = edge_rule(graph, p=0.4, mode="abs")
    assert masks[1].tolist() == [True, True, False, False, False]
    # Out-edges into {F0, F1} by |.|: F0 3 + 3 = 6, F1 1, error 0.5.
    assert masks[0].tolist() == [True, True, False]
    tied = _graph([_layer(0, [0, 1], [1.0, 1.0], 1.0, d_sae=4),
                   _layer(1, [0, 1, 2, 3], [-1.0, 0.0, 3.0, 0.0], 0.0, d_sae=4)], edges)
    assert node_rule_on_graph(tied, p=0.4, ties="index")[1].tolist() == [True, False, True,
                                                                          False, False]
    assert node_rule_on_graph(tied, p=0.4)[1].tolist() == [False, True, True, False, False]


def test_graph_n_max_counts_token_slots():
    layers = [_layer(0, [1], [1.0], 0.0, d_sae=4, tokens=[0]),
              _layer(1, [0], [1.0], 0.0, d_sae=5, tokens=[2])]
    token = _graph(layers, [torch.ones(2, 1)], granularity="token", n_tokens=3)
    assert graph_n_max(token) == 5 * 3 + 1
    feature = _graph([_layer(0, [1], [1.0], 0.0, d_sae=4), _layer(1, [0], [1.0], 0.0, d_sae=5)],
                     [torch.ones(2, 1)])
    assert graph_n_max(feature) == 5 + 1


def test_replacement_score_known_answer():
    # L0: F0 + error; L1: G0, G1 (no incoming edge) + error. Row-normalised |A|:
    # logit <- (G0, G1, e1) = (3, 1, 1) / 5; G0 <- (F0, e0) = (3, 1) / 4.
    # Influence: G0 .6, G1 .2, e1 .2; F0 .6 * .75 = .45, e0 .6 * .25 = .15.
    # Replacement = inputs / (inputs + errors) = .45 / (.45 + .15 + .2) = .5625.
    layers = [_layer(0, [0], [1.0], 0.0), _layer(1, [0, 1], [3.0, 1.0], 1.0)]
    graph = _graph(layers, [torch.tensor([[3.0, 0.0], [1.0, 0.0]])])
    assert graph_scores(graph).replacement == pytest.approx(0.5625)


def test_fraction_messages_name_the_setting():
    with pytest.raises(ValueError, match=r"^tau must be in \[0, 1\], got 1.5$"):
        threshold_rule([torch.ones(3)], tau=1.5)
    graph = _graph([_layer(0, [0], [1.0], 0.0), _layer(1, [0], [1.0], 0.0)], [torch.ones(2, 1)])
    with pytest.raises(ValueError, match=r"^edge_threshold must be in \[0, 1\], got 2$"):
        prune_by_influence_grid(graph, node_thresholds=[0.5], edge_thresholds=[2])
    message = (r"^give exactly one of p= \(node count rule\), k= \(fraction of each layer\) "
               r"or tau= \(threshold rule\)$")
    with pytest.raises(ValueError, match=message):
        node_rule_on_graph(graph)
