"""`Circuit.from_graph`, its kept edges and JSON on hand-built graphs (feature and token nodes).

Every expected edge list below is read off the hand-written matrices: an edge is kept when both
its end nodes are selected, its edge mask (if any) is set and its weight is non-zero.
"""

import pytest
import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer
from rrm_plugin.circuits.circuit import Circuit

H = [f"blocks.{k}.hook_resid_post" for k in range(3)]
T, F = True, False


def _layer(k, features, scores, error_score, tokens=None, d_sae=5):
    n = len(features)
    return GraphLayer(H[k], k, d_sae, torch.tensor(features),
                      None if tokens is None else torch.tensor(tokens), torch.ones(n),
                      torch.ones(n), torch.tensor(scores), error_score)


def feature_graph() -> Graph:
    layers = [_layer(0, [0, 2, 4], [1.0, 1.0, 1.0], 1.0),
              _layer(1, [1, 3, 4], [0.5, 0.0, 1.0], -1.5),
              _layer(2, [0, 2], [1.0, -3.0], 0.0)]
    e0 = torch.tensor([[1.0, 0.0, 2.0],  # rows: L0/F0, L0/F2, L0/F4, L0/error
                       [-2.0, 3.0, 0.0],  # columns: L1/F1, L1/F3, L1/F4
                       [4.0, 5.0, 6.0],
                       [6.0, -7.0, 1.0]])
    e1 = torch.tensor([[0.5, 0.0],  # rows: L1/F1, L1/F3, L1/F4, L1/error; columns: L2/F0, L2/F2
                       [1.0, 2.0],
                       [0.0, -1.0],
                       [3.0, 4.0]])
    return Graph(layers, [e0, e1], target_class=0, metric="logit", value=1.0,
                 logits=torch.tensor([1.0, 0.0]))


NODE_MASKS = [torch.tensor([T, T, F, T]), torch.tensor([T, T, T, F]), torch.tensor([T, F, T])]
EDGE_MASKS = [torch.tensor([[T, T, T], [T, F, T], [T, T, T], [T, T, F]]), torch.ones(4, 2) > 0]

LAYER_EDGES_MASKED = [("L0/F0", "L1/F1", 1.0), ("L0/F0", "L1/F4", 2.0), ("L0/F2", "L1/F1", -2.0),
                      ("L0/error", "L1/F1", 6.0), ("L0/error", "L1/F3", -7.0),
                      ("L1/F1", "L2/F0", 0.5), ("L1/F3", "L2/F0", 1.0)]
LAYER_EDGES_ALL = [("L0/F0", "L1/F1", 1.0), ("L0/F0", "L1/F4", 2.0), ("L0/F2", "L1/F1", -2.0),
                   ("L0/F2", "L1/F3", 3.0), ("L0/error", "L1/F1", 6.0),
                   ("L0/error", "L1/F3", -7.0), ("L0/error", "L1/F4", 1.0),
                   ("L1/F1", "L2/F0", 0.5), ("L1/F3", "L2/F0", 1.0)]
# Logit edges: L2 scores (1, -3) and error score 0; L2/F2 is not selected, the error edge is zero.
LOGIT_EDGES = [("L2/F0", "logit", 1.0)]


def test_feature_circuit_latents_errors_and_edges():
    circuit = Circuit.from_graph(feature_graph(), NODE_MASKS, edge_masks=EDGE_MASKS)
    assert circuit.hook_names == H
    expected = [[T, F, T, F, F], [F, T, F, T, T], [T, F, F, F, F]]
    assert [m.tolist() for m in circuit.latents] == expected
    assert all(m.dtype == torch.bool for m in circuit.latents)
    assert circuit.errors.dtype == torch.bool and circuit.errors.tolist() == [T, F, T]
    assert circuit.node_count == 8
    assert [circuit.layer_features(k) for k in range(3)] == [[0, 2], [1, 3, 4], [0]]
    assert circuit.edges == LAYER_EDGES_MASKED + LOGIT_EDGES


def test_edges_without_edge_masks_and_with_a_logit_edge_mask():
    graph = feature_graph()
    assert Circuit.from_graph(graph, NODE_MASKS).edges == LAYER_EDGES_ALL + LOGIT_EDGES
    # A logit edge mask can only remove logit edges: L2/F2 stays out although its mask bit is set.
    masked = Circuit.from_graph(graph, NODE_MASKS, logit_edge_mask=torch.tensor([F, T, T]))
    assert masked.edges == LAYER_EDGES_ALL
    kept = Circuit.from_graph(graph, NODE_MASKS, logit_edge_mask=torch.tensor([T, F, F]))
    assert kept.edges == LAYER_EDGES_ALL + LOGIT_EDGES
    assert Circuit.from_graph(graph, NODE_MASKS, list_edges=False).edges == []


def test_feature_circuit_json():
    circuit = Circuit.from_graph(feature_graph(), NODE_MASKS, edge_masks=EDGE_MASKS)
    assert circuit.to_json_dict() == {
        "node_count": 8,
        "layers": [{"hook_name": H[0], "error": True, "features": [0, 2]},
                   {"hook_name": H[1], "error": False, "features": [1, 3, 4]},
                   {"hook_name": H[2], "error": True, "features": [0]}],
        "edges": [{"source": s, "target": t, "weight": w}
                  for s, t, w in LAYER_EDGES_MASKED + LOGIT_EDGES],
    }


def token_graph() -> Graph:
    layers = [_layer(0, [1, 1, 2], [1.0, 1.0, 1.0], 1.0, tokens=[0, 2, 1], d_sae=4),
              _layer(1, [3, 0], [1.0, 2.0], 0.5, tokens=[2, 2], d_sae=4)]
    edges = [torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])]
    return Graph(layers, edges, target_class=0, metric="logit", value=1.0,
                 logits=torch.tensor([1.0, 0.0]), granularity="token", n_tokens=3)


def test_token_circuit_latents_edges_and_json():
    masks = [torch.tensor([T, T, F, F]), torch.tensor([F, T, T])]
    circuit = Circuit.from_graph(token_graph(), masks)
    l0 = torch.zeros(3, 4, dtype=torch.bool)
    l0[0, 1] = l0[2, 1] = True
    l1 = torch.zeros(3, 4, dtype=torch.bool)
    l1[2, 0] = True
    assert circuit.latents[0].dtype == torch.bool
    assert torch.equal(circuit.latents[0], l0) and torch.equal(circuit.latents[1], l1)
    assert circuit.errors.tolist() == [F, T]
    assert circuit.node_count == 4
    assert [circuit.layer_features(k) for k in range(2)] == [[1], [0]]
    edges = [("L0/T0/F1", "L1/T2/F0", 2.0), ("L0/T2/F1", "L1/T2/F0", 4.0),
             ("L1/T2/F0", "logit", 2.0), ("L1/error", "logit", 0.5)]
    assert circuit.edges == edges
    assert circuit.to_json_dict() == {
        "node_count": 4,
        "layers": [{"hook_name": H[0], "error": False, "nodes": [[0, 1], [2, 1]]},
                   {"hook_name": H[1], "error": True, "nodes": [[2, 0]]}],
        "edges": [{"source": s, "target": t, "weight": w} for s, t, w in edges],
    }


def test_shape_errors_are_named():
    graph = feature_graph()
    with pytest.raises(ValueError, match=r"^got 1 node masks for 3 layers$"):
        Circuit.from_graph(graph, NODE_MASKS[:1])
    with pytest.raises(ValueError, match=r"^circuit has 2 layers but 1 latent masks and 2 error "
                                         r"flags$"):
        Circuit(H[:2], [torch.zeros(5, dtype=torch.bool)], torch.tensor([F, F]))
    with pytest.raises(ValueError, match=r"^circuit has 1 layers but 1 latent masks and 2 error "
                                         r"flags$"):
        Circuit(H[:1], [torch.zeros(5, dtype=torch.bool)], torch.tensor([F, F]))
