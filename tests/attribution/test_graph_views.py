"""Views of a graph (node table, JSON, networkx, dense scores, edge entries) on hand graphs whose
every value is written out below."""

import pytest
import torch

from rrm_plugin.attribution.graph import dense_scores, edge_entries
from rrm_plugin.attribution.graph_views import graph_json, graph_networkx
from tests.attribution.hand_graphs import feature_hand_graph, sparse_token_hand_graph

LOW, TOP = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


def _node(id_, layer, hook, feature, token, activation, delta, score):
    return {"id": id_, "layer": layer, "hook_name": hook, "feature": feature, "token": token,
            "activation": activation, "delta": delta, "score": score}


FEATURE_NODES = [
    _node("L0/F1", 0, LOW, 1, None, 2.0, 1.5, 0.75),
    _node("L0/F4", 0, LOW, 4, None, 3.0, -0.5, -0.25),
    _node("L1/F0", 1, TOP, 0, None, 1.0, 0.5, 1.0),
    _node("L1/F2", 1, TOP, 2, None, 0.0, -1.0, -0.5),
    _node("L1/F5", 1, TOP, 5, None, 4.0, 2.0, 2.0),
]
# Row-major over the edge matrix (zeros skipped), then the logit edges (top layer, then error).
FEATURE_EDGES = [
    ("L0/F1", "L1/F0", 0.5), ("L0/F1", "L1/F5", 0.25), ("L0/F4", "L1/F0", -0.25),
    ("L0/error", "L1/F0", 0.125), ("L0/error", "L1/F5", -1.0),
    ("L1/F0", "logit", 1.0), ("L1/F2", "logit", -0.5), ("L1/F5", "logit", 2.0),
    ("L1/error", "logit", -0.5),
]


def _edges(data):
    return [(e["source"], e["target"], e["weight"]) for e in data["edges"]]


def test_node_table_lists_every_latent_node():
    assert feature_hand_graph().node_table() == FEATURE_NODES
    low, top = "blocks.2.hook_resid_post", "blocks.3.hook_resid_post"
    assert sparse_token_hand_graph().node_table() == [
        _node("L0/T1/F3", 0, low, 3, 1, 1.0, 1.0, 0.5),
        _node("L0/T4/F0", 0, low, 0, 4, 2.0, 2.0, -0.75),
        _node("L1/T0/F1", 1, top, 1, 0, 3.0, 2.0, 1.5),
        _node("L1/T2/F1", 1, top, 1, 2, 1.0, 1.0, -0.5),
    ]


def test_logit_edges_and_error_scores():
    graph = feature_hand_graph()
    assert graph.logit_edges.tolist() == [1.0, -0.5, 2.0, -0.5]
    assert graph.error_scores.tolist() == [0.125, -0.5]


def test_json_dict_of_the_hand_graph():
    data = graph_json(feature_hand_graph())
    assert data == {
        "target": {"class": 1, "metric": "adjusted_logit", "value": 1.0},
        "granularity": "feature", "linearised": True, "nodes": FEATURE_NODES,
        "error_nodes": [{"id": "L0/error", "layer": 0, "hook_name": LOW, "score": 0.125},
                        {"id": "L1/error", "layer": 1, "hook_name": TOP, "score": -0.5}],
        "logit_node": {"id": "logit", "class": 1, "value": 1.0},
        "edges": [{"source": s, "target": t, "weight": w} for s, t, w in FEATURE_EDGES],
        "edges_total": 9, "metadata": {"image": 7},
    }


def test_json_edge_filters():
    graph = feature_hand_graph()
    # |weight| strictly above the floor: 0.25 and 0.125 go, 0.5 stays.
    above = graph_json(graph, min_abs_edge=0.25)
    assert _edges(above) == [e for e in FEATURE_EDGES if abs(e[2]) > 0.25]
    assert above["edges_total"] == 6
    # The three strongest edges (|w| 2, 1, 1), kept in the table order; the total counts all.
    capped = graph_json(graph, max_edges=3)
    assert _edges(capped) == [("L0/error", "L1/F5", -1.0), ("L1/F0", "logit", 1.0),
                              ("L1/F5", "logit", 2.0)]
    assert capped["edges_total"] == 9
    assert _edges(graph_json(graph, max_edges=9)) == FEATURE_EDGES
    assert graph_json(graph, min_abs_edge=5.0)["edges"] == []


def test_json_edges_of_a_sparse_token_graph_skip_stored_zeros():
    data = graph_json(sparse_token_hand_graph())
    assert _edges(data) == [("L0/T1/F3", "L1/T0/F1", 0.5), ("L0/T4/F0", "L1/T2/F1", -0.75),
                            ("L0/error", "L1/T2/F1", 0.25), ("L1/T0/F1", "logit", 1.5),
                            ("L1/T2/F1", "logit", -0.5), ("L1/error", "logit", -0.125)]
    assert data["linearised"] is False and data["granularity"] == "token"


def test_networkx_view():
    graph = graph_networkx(feature_hand_graph())
    assert graph.graph == {"target_class": 1, "metric": "adjusted_logit", "value": 1.0}
    expected = {n["id"]: {"kind": "feature", **n} for n in FEATURE_NODES}
    expected["L0/error"] = {"kind": "error", "id": "L0/error", "layer": 0, "hook_name": LOW,
                            "score": 0.125}
    expected["L1/error"] = {"kind": "error", "id": "L1/error", "layer": 1, "hook_name": TOP,
                            "score": -0.5}
    expected["logit"] = {"kind": "logit", "id": "logit", "class": 1, "value": 1.0}
    assert dict(graph.nodes(data=True)) == expected
    assert sorted((s, t, d["weight"]) for s, t, d in graph.edges(data=True)) == \
        sorted(FEATURE_EDGES)


def test_dense_scores_scatter_nodes_into_slots():
    low, top = dense_scores(feature_hand_graph())
    assert low.tolist() == [0.0, 0.75, 0.0, 0.0, -0.25, 0.0, 0.125]
    assert top.tolist() == [1.0, 0.0, -0.5, 0.0, 0.0, 2.0, -0.5]
    low, top = dense_scores(sparse_token_hand_graph())  # slot = token * d_sae + latent
    expected_low, expected_top = torch.zeros(21), torch.zeros(21)
    expected_low[[1 * 4 + 3, 4 * 4 + 0, 20]] = torch.tensor([0.5, -0.75, 0.25])
    expected_top[[0 * 4 + 1, 2 * 4 + 1, 20]] = torch.tensor([1.5, -0.5, -0.125])
    assert torch.equal(low, expected_low) and torch.equal(top, expected_top)


def test_edge_entries_of_dense_matrices():
    edge = feature_hand_graph().edges[0]
    rows, cols, weights = edge_entries(edge)
    assert (rows.tolist(), cols.tolist(), weights.tolist()) == (
        [0, 0, 1, 2, 2], [0, 2, 0, 0, 2], [0.5, 0.25, -0.25, 0.125, -1.0])
    mask = torch.tensor([[True, False, False], [True, True, True], [False, True, True]])
    rows, cols, weights = edge_entries(edge, mask)
    assert (rows.tolist(), cols.tolist(), weights.tolist()) == (
        [0, 1, 2], [0, 0, 2], [0.5, -0.25, -1.0])


def test_edge_entries_of_sparse_matrices():
    edge = sparse_token_hand_graph().edges[0]
    rows, cols, weights = edge_entries(edge)  # the stored zero at (2, 0) is no edge
    assert (rows.tolist(), cols.tolist(), weights.tolist()) == (
        [0, 1, 2], [0, 1, 1], [0.5, -0.75, 0.25])
    mask = torch.sparse_coo_tensor(edge.indices(), torch.tensor([False, True, True, True]),
                                   edge.shape, check_invariants=True)
    rows, cols, weights = edge_entries(edge, mask)
    assert (rows.tolist(), cols.tolist(), weights.tolist()) == ([1, 2], [1, 1], [-0.75, 0.25])
    other = torch.sparse_coo_tensor(torch.tensor([[0], [1]]), torch.tensor([True]), edge.shape,
                                    check_invariants=True)
    with pytest.raises(ValueError, match=r"^a sparse edge matrix takes a sparse mask over its "
                                         r"stored entries \(as prune_by_influence returns\); "
                                         r"got other indices$"):
        edge_entries(edge, other)


def test_sparse_graphs_refuse_dense_only_code():
    assert sparse_token_hand_graph().sparse_edges and not feature_hand_graph().sparse_edges
    feature_hand_graph().require_dense_edges("pruning")
    with pytest.raises(ValueError, match=r"^circuit figures needs dense edge matrices; this token "
                                         r"graph keeps only each node's strongest in-edges "
                                         r"\(EngineConfig\(token_top_k=\.\.\.\)\)\. Prune it "
                                         r"with prune_by_influence, or attribute without "
                                         r"token_top_k if it fits in memory$"):
        sparse_token_hand_graph().require_dense_edges("circuit figures")
