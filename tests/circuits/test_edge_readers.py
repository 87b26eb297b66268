"""Influence pruning and graph scores of sparse (top-k token) graphs: the hand-computed answers
of the dense rule, and equality with the dense path where the top-k keeps every edge."""

import json

import pytest
import torch

from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.attribution.graph_views import graph_json
from rrm_plugin.circuits.circuit import Circuit
from rrm_plugin.circuits.circuit_tracer import write_circuit_tracer
from rrm_plugin.circuits.influence import graph_scores, prune_by_influence, prune_by_influence_grid
from rrm_plugin.circuits.pruning import dense_edges, edge_rule
from tests.circuits.test_pruning import INFLUENCE_CASES, influence_graph


def sparse_influence_graph() -> Graph:
    graph = influence_graph()
    graph.edges = [e.to_sparse().coalesce() for e in graph.edges]
    return graph


def _dense_masks(result):
    return ([m.tolist() for m in result.node_masks],
            [m.to_dense().tolist() for m in result.edge_masks], result.logit_edge_mask.tolist())


@pytest.mark.parametrize(("node_t", "edge_t", "nodes", "edges", "logit"), INFLUENCE_CASES)
def test_sparse_pruning_gives_the_hand_computed_answers(node_t, edge_t, nodes, edges, logit):
    result = prune_by_influence(sparse_influence_graph(), node_threshold=node_t,
                                edge_threshold=edge_t)
    assert all(m.is_sparse for m in result.edge_masks)
    assert _dense_masks(result) == (nodes, [edges], logit)
    assert [i.tolist() for i in result.influence] == [[0.375, 0.28125, 0.21875],
                                                       [0.625, 0.25, 0.125]]


def test_sparse_grid_gives_the_hand_computed_answers():
    grid = prune_by_influence_grid(
        sparse_influence_graph(), node_thresholds=sorted({c[0] for c in INFLUENCE_CASES}),
        edge_thresholds=sorted({c[1] for c in INFLUENCE_CASES}))
    for node_t, edge_t, nodes, edges, logit in INFLUENCE_CASES:
        assert _dense_masks(grid[(node_t, edge_t)]) == (nodes, [edges], logit), (node_t, edge_t)


def test_sparse_graph_scores_by_hand():
    # Replacement: inputs a0 + a1 = .65625 of (inputs + errors .21875 + .125) = 1.
    # Completeness: b0 takes 1/4 of its weight from err0, b1 1/4; the logit 1/8 from err1.
    # weighted = (.375 + .28125 + .21875) + (.625 * .75 + .25 * .75 + .125) + (1 - .125)
    # Every weight is dyadic, so the sums are exact in any order (sparse or dense); only the
    # final float32 division rounds, by <= 3e-8 (half an ulp of ~0.9): abs=1e-7.
    scores = graph_scores(sparse_influence_graph())
    assert scores.replacement == pytest.approx(0.65625, abs=1e-7)
    weighted = 0.875 + 0.78125 + 0.875
    assert scores.completeness == pytest.approx(weighted / (0.875 + 1.0 + 1.0), abs=1e-7)
    assert scores == pytest.approx(graph_scores(influence_graph()), abs=1e-7)


@pytest.fixture
def token_graphs(vit, saes, images, baselines):
    dense = attribute(vit, saes, images[:1], baselines=baselines, granularity="token")[0]
    every = attribute(vit, saes, images[:1], baselines=baselines, granularity="token",
                      engine=EngineConfig(token_top_k=10**6))[0]
    top = attribute(vit, saes, images[:1], baselines=baselines, granularity="token",
                    engine=EngineConfig(token_top_k=3))[0]
    return dense, every, top


def test_sparse_pruning_equals_dense_when_every_edge_is_kept(token_graphs):
    dense, every, _ = token_graphs
    want = prune_by_influence(dense)
    got = prune_by_influence(every)
    for a, b in zip(got.influence, want.influence, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    assert [m.tolist() for m in got.node_masks] == [m.tolist() for m in want.node_masks]
    for m, w, e in zip(got.edge_masks, want.edge_masks, dense.edges, strict=True):
        assert torch.equal(m.to_dense(), w & (e != 0))
    assert torch.equal(got.logit_edge_mask, want.logit_edge_mask)
    assert graph_scores(every) == pytest.approx(graph_scores(dense), abs=1e-6)
    assert sum(int(m.sum()) for m in got.node_masks) > 3


def test_top_k_graph_round_trips_and_exports(token_graphs, tmp_path):
    _, _, top = token_graphs
    top.save(tmp_path / "g")
    loaded = Graph.load(tmp_path / "g")
    for a, b in zip(loaded.edges, top.edges, strict=True):
        assert a.is_sparse and torch.equal(a.to_dense(), b.to_dense())
    pruned = prune_by_influence(loaded)
    circuit = Circuit.from_graph(loaded, pruned.node_masks, edge_masks=pruned.edge_masks,
                                 logit_edge_mask=pruned.logit_edge_mask)
    n_inner = sum(int((m.to_dense() & (e.to_dense() != 0)).sum())
                  for m, e in zip(pruned.edge_masks, loaded.edges, strict=True))
    n_logit = int((pruned.logit_edge_mask & (loaded.logit_edges != 0)).sum())
    assert len(circuit.edges) == n_inner + n_logit and n_inner > 0
    # Without edge masks: every stored edge between kept nodes.
    nodes_only = Circuit.from_graph(loaded, pruned.node_masks)
    between = sum(int((pruned.node_masks[k][:, None] & pruned.node_masks[k + 1][None, :-1]
                       & (e.to_dense() != 0)).sum()) for k, e in enumerate(loaded.edges))
    n_top = int((pruned.node_masks[-1] & (loaded.logit_edges != 0)).sum())
    assert len(nodes_only.edges) == between + n_top > len(circuit.edges)
    data = json.loads(write_circuit_tracer(loaded, tmp_path / "ct").read_text())
    assert len(data["links"]) == n_inner + n_logit
    as_json = graph_json(loaded)
    stored = sum(int((e.to_dense() != 0).sum()) for e in loaded.edges)
    assert as_json["edges_total"] == stored + int((loaded.logit_edges != 0).sum())


def test_corrupt_sparse_edges_are_reported(token_graphs, tmp_path):
    from rrm_plugin.io import CorruptFileError

    _, _, top = token_graphs
    json_path, _ = top.save(tmp_path / "g")
    meta = json.loads(json_path.read_text())
    meta["sparse_edges"]["0"][0] = 1  # fewer source rows than the stored indices reach
    meta["layers"][0]["d_sae"] = meta["layers"][0]["d_sae"]
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match="indices outside"):
        Graph.load(tmp_path / "g")


def test_dense_only_views_refuse_sparse_graphs(token_graphs):
    _, _, top = token_graphs
    for call in (lambda: edge_rule(top, p=0.1), lambda: dense_edges(top)):
        with pytest.raises(ValueError, match="needs dense edge matrices"):
            call()


def test_a_sparse_edge_mask_must_have_the_edge_matrix_entries():
    graph = sparse_influence_graph()
    pruned = prune_by_influence(graph)
    other = torch.ones(1, 1, dtype=torch.bool).to_sparse()  # one entry at (0, 0) only
    other = torch.sparse_coo_tensor(other.indices(), other.values(), graph.edges[0].shape,
                                    check_invariants=True)
    with pytest.raises(ValueError, match="sparse mask over its stored entries"):
        Circuit.from_graph(graph, pruned.node_masks, edge_masks=[other])
