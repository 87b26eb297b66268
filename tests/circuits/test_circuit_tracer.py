"""Export to circuit-tracer's graph-file schema (its frontend's pydantic models when installed)."""

import json
import math

import pytest
import torch

from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.graph import Graph, GraphLayer
from rrm_plugin.circuits.circuit_tracer import (
    circuit_tracer_dict,
    prompt_tokens,
    write_circuit_tracer,
)
from rrm_plugin.circuits.influence import prune_by_influence

# circuit-tracer's schema as its source defines it (circuit_tracer/frontend/graph_models.py).
METADATA_KEYS = {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list,
                 "prompt": str, "node_threshold": float, "schema_version": int}
QPARAMS_KEYS = {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str,
                "sg_pos": str}
NODE_REQUIRED = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int,
                 "feature_type": str, "jsNodeId": str}
NODE_OPTIONAL = {"token_prob": float, "is_target_logit": bool, "run_idx": int,
                 "reverse_ctx_idx": int, "clerp": str, "influence": float, "activation": float}


def token_hand_graph() -> Graph:
    """Block 0: latent 2 on patch 1, latent 0 on patch 3; block 1: latent 5 on CLS."""
    layer0 = GraphLayer("blocks.0.hook_resid_post", 0, 8, torch.tensor([2, 0]),
                        torch.tensor([1, 3]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]),
                        torch.tensor([1.0, 0.5]), 0.25)
    layer1 = GraphLayer("blocks.1.hook_resid_post", 1, 8, torch.tensor([5]), torch.tensor([0]),
                        torch.tensor([3.0]), torch.tensor([3.0]), torch.tensor([2.0]), 0.5)
    edges = [torch.tensor([[1.0], [0.5], [0.25]])]
    return Graph([layer0, layer1], edges, target_class=2, metric="adjusted_logit", value=2.5,
                 logits=torch.tensor([0.0, 1.0, 3.0]), granularity="token", n_tokens=5)


def check_schema(data: dict) -> None:
    """Independent check against the schema in circuit-tracer's source."""
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    for key, kind in METADATA_KEYS.items():
        assert isinstance(data["metadata"][key], kind), key
    for key, kind in QPARAMS_KEYS.items():
        assert isinstance(data["qParams"][key], kind), key
    ids = set()
    for node in data["nodes"]:
        for key, kind in NODE_REQUIRED.items():
            assert isinstance(node[key], kind) and not isinstance(node[key], bool), (key, node)
        for key, value in node.items():
            assert key in NODE_REQUIRED or key in NODE_OPTIONAL, key
            if key in NODE_OPTIONAL and value is not None:
                assert isinstance(value, NODE_OPTIONAL[key]), (key, node)
        assert 0 <= node["ctx_idx"] < len(data["metadata"]["prompt_tokens"])
        assert node["node_id"] not in ids
        ids.add(node["node_id"])
    for link in data["links"]:
        assert set(link) == {"source", "target", "weight"}
        assert link["source"] in ids and link["target"] in ids


def test_prompt_tokens_name_patches_by_grid_position():
    assert prompt_tokens(5) == ["CLS", "p(0,0)", "p(0,1)", "p(1,0)", "p(1,1)"]
    assert prompt_tokens(7, n_prefix=3) == ["CLS", "reg0", "reg1", "p(0,0)", "p(0,1)", "p(1,0)",
                                            "p(1,1)"]
    assert prompt_tokens(4) == ["CLS", "p(0)", "p(1)", "p(2)"]


def test_hand_graph_file(tmp_path):
    path = write_circuit_tracer(token_hand_graph(), tmp_path / "digit", node_threshold=1.0,
                                edge_threshold=1.0)
    data = json.loads(path.read_text())
    check_schema(data)
    assert path.name == "digit.json" and data["metadata"]["slug"] == "digit"
    assert data["metadata"]["prompt_tokens"] == ["CLS", "p(0,0)", "p(0,1)", "p(1,0)", "p(1,1)"]
    links = {(x["source"], x["target"], x["weight"]) for x in data["links"]}
    assert links == {("0_2_1", "1_5_0", 1.0), ("0_0_3", "1_5_0", 0.5),
                     ("err_0_0", "1_5_0", 0.25), ("1_5_0", "3_2_0", 2.0),
                     ("err_1_0", "3_2_0", 0.5)}
    by_id = {n["node_id"]: n for n in data["nodes"]}
    assert by_id["0_2_1"]["ctx_idx"] == 1 and by_id["0_2_1"]["layer"] == "0"
    assert by_id["0_2_1"]["feature"] == (0 + 2) * (0 + 2 + 1) // 2 + 2  # Cantor pairing
    assert by_id["3_2_0"]["feature_type"] == "logit" and by_id["3_2_0"]["is_target_logit"]
    assert by_id["3_2_0"]["token_prob"] == pytest.approx(float(torch.tensor(
        [0.0, 1.0, 3.0]).softmax(0)[2]))
    # One embedding node per prompt token, as circuit-tracer always keeps them.
    assert sorted(n["ctx_idx"] for n in data["nodes"] if n["feature_type"] == "embedding") == \
        list(range(5))
    # circuit-tracer's cumulative influence: the logit's strongest source comes first.
    assert by_id["1_5_0"]["influence"] < by_id["err_1_0"]["influence"] <= 1.0 + 1e-6
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["digit"]


def test_metadata_index_keeps_other_graphs(tmp_path):
    graph = token_hand_graph()
    write_circuit_tracer(graph, tmp_path / "a.json")
    write_circuit_tracer(graph, tmp_path / "b.json")
    write_circuit_tracer(graph, tmp_path / "a.json", node_threshold=0.5)
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert sorted(g["slug"] for g in index["graphs"]) == ["a", "b"]
    assert next(g for g in index["graphs"] if g["slug"] == "a")["node_threshold"] == 0.5


def test_feature_granularity_is_refused(vit, saes, images, baselines, tmp_path):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    with pytest.raises(ValueError, match="granularity='token'"):
        write_circuit_tracer(graph, tmp_path / "g")


def test_real_graph_matches_pruning_and_circuit_tracer_models(vit, saes, images, baselines,
                                                              tmp_path):
    graph = attribute(vit, saes, images[:1], baselines=baselines, granularity="token")[0]
    data = json.loads(write_circuit_tracer(graph, tmp_path / "g").read_text())
    check_schema(data)
    pruned = prune_by_influence(graph)
    kept = sum(int(m.sum()) for m in pruned.node_masks)
    assert sum(n["feature_type"] not in ("embedding", "logit") for n in data["nodes"]) == kept
    n_links = sum(int((m & (e != 0)).sum()) for m, e in zip(pruned.edge_masks, graph.edges,
                                                             strict=True))
    n_links += int((pruned.logit_edge_mask & (graph.logit_edges != 0)).sum())
    assert len(data["links"]) == n_links > 0
    models = pytest.importorskip(
        "circuit_tracer.frontend.graph_models",
        reason="circuit-tracer not installed (pip install --no-deps circuit-tracer)")
    model = models.Model.model_validate(data)
    assert json.loads(model.model_dump_json())["links"] == data["links"]
    assert [n.node_id for n in model.nodes] == [n["node_id"] for n in data["nodes"]]


def _feature_node(node_id, feature, layer, ctx, js, clerp, influence, activation):
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": ctx,
            "feature_type": "cross layer transcoder", "jsNodeId": js, "clerp": clerp,
            "influence": pytest.approx(influence, rel=1e-6), "activation": activation}


def _error_node(block, influence):
    return {"node_id": f"err_{block}_0", "feature": -1, "layer": str(block), "ctx_idx": 0,
            "feature_type": "mlp reconstruction error", "jsNodeId": f"{block}_0-0",
            "clerp": f"blocks.{block}.hook_resid_post SAE error (all tokens)",
            "influence": pytest.approx(influence, rel=1e-6)}


def test_hand_graph_nodes_written_out():
    """Influence by hand: logit edges 2, 0.5 give 0.8, 0.2; latent 5's in-edges 1, 0.5, 0.25
    split its 0.8 as 16/35, 8/35, 4/35. Sorted, the cumulative shares are 28, 44, 52, 59 and 63
    sixty-thirds."""
    data = circuit_tracer_dict(token_hand_graph(), slug="s", scan="mnist", node_threshold=1.0,
                               edge_threshold=1.0, n_prefix=3, class_names=["a", "b", "two"])
    tokens = ["CLS", "reg0", "reg1", "p(0)", "p(1)"]  # 2 patches: not a square grid
    assert data["metadata"] == {"slug": "s", "scan": "mnist", "transcoder_list": [],
                                "prompt_tokens": tokens, "prompt": "CLS reg0 reg1 p(0) p(1)",
                                "node_threshold": 1.0, "schema_version": 1}
    assert data["qParams"] == {"pinnedIds": [], "supernodes": [], "linkType": "both",
                               "clickedId": "", "sg_pos": ""}
    p = math.exp(3) / (1 + math.exp(1) + math.exp(3))
    assert data["nodes"] == [
        *({"node_id": f"E_{i}_{i}", "feature": i, "layer": "E", "ctx_idx": i,
           "feature_type": "embedding", "jsNodeId": f"E_{i}-{i}", "clerp": t}
          for i, t in enumerate(tokens)),
        _feature_node("0_2_1", 5, "0", 1, "0_2-0", "blocks.0.hook_resid_post latent 2 @ reg0",
                      44 / 63, 1.0),
        _feature_node("0_0_3", 0, "0", 3, "0_0-0", "blocks.0.hook_resid_post latent 0 @ p(0)",
                      52 / 63, 2.0),
        _error_node(0, 1.0),
        _feature_node("1_5_0", 26, "1", 0, "1_5-0", "blocks.1.hook_resid_post latent 5 @ CLS",
                      28 / 63, 3.0),
        _error_node(1, 59 / 63),
        {"node_id": "3_2_0", "feature": 2, "layer": "3", "ctx_idx": 0, "feature_type": "logit",
         "token_prob": pytest.approx(p, rel=1e-6), "is_target_logit": True, "jsNodeId": "L_2-0",
         "clerp": 'Output "two" (p=0.844)'},
    ]
    assert data["links"] == [
        {"source": "0_2_1", "target": "1_5_0", "weight": 1.0},
        {"source": "0_0_3", "target": "1_5_0", "weight": 0.5},
        {"source": "err_0_0", "target": "1_5_0", "weight": 0.25},
        {"source": "1_5_0", "target": "3_2_0", "weight": 2.0},
        {"source": "err_1_0", "target": "3_2_0", "weight": 0.5},
    ]


def test_pruned_nodes_and_links_are_left_out():
    """At the default node threshold 0.8 the cumulative shares 28/63, 44/63, 52/63 (the first
    past 0.8) keep the three latents; both error nodes (59/63, 63/63) and their links go."""
    graph = token_hand_graph()
    pruned = prune_by_influence(graph)
    data = circuit_tracer_dict(graph, slug="s")
    kept = [n["node_id"] for n in data["nodes"] if n["feature_type"] != "embedding"]
    assert kept == ["0_2_1", "0_0_3", "1_5_0", "3_2_0"]
    assert [bool(m) for m in torch.cat(pruned.node_masks)] == [True, True, False, True, False]
    assert [(x["source"], x["target"]) for x in data["links"]] == [
        ("0_2_1", "1_5_0"), ("0_0_3", "1_5_0"), ("1_5_0", "3_2_0")]
    assert data["metadata"]["node_threshold"] == 0.8 and data["metadata"]["scan"] == "rrm"
    assert data["metadata"]["prompt_tokens"] == prompt_tokens(5, n_prefix=1)  # the default


def test_prompt_tokens_edge_cases():
    assert prompt_tokens(4, n_prefix=0) == ["p(0,0)", "p(0,1)", "p(1,0)", "p(1,1)"]
    assert prompt_tokens(2, n_prefix=2) == ["CLS", "reg0"]
    assert prompt_tokens(11, n_prefix=2) == ["CLS", "reg0", *(f"p({i // 3},{i % 3})"
                                                             for i in range(9))]
    for bad in (-1, 6):
        with pytest.raises(ValueError, match=rf"^n_prefix must be in \[0, n_tokens=5\], "
                                             rf"got {bad}$"):
            prompt_tokens(5, n_prefix=bad)


def test_file_names_slug_and_index(tmp_path):
    graph = token_hand_graph()
    path = write_circuit_tracer(graph, tmp_path / "run.v2", node_threshold=1.0,
                                edge_threshold=1.0)
    assert path == tmp_path / "run.v2.json"
    assert json.loads(path.read_text())["metadata"]["slug"] == "run.v2"
    named = write_circuit_tracer(graph, tmp_path / "x.json", slug="digit-7", scan="s", n_prefix=2,
                                 class_names=["a", "b", "c"])
    data = json.loads(named.read_text())
    assert (named.name, data["metadata"]["slug"], data["metadata"]["scan"]) == (
        "x.json", "digit-7", "s")
    assert data["metadata"]["prompt_tokens"][:2] == ["CLS", "reg0"]
    assert data["nodes"][-1]["clerp"].startswith('Output "c"')
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert index == {"graphs": [json.loads(path.read_text())["metadata"], data["metadata"]]}


def test_index_keeps_its_other_keys(tmp_path):
    (tmp_path / "graph-metadata.json").write_text(json.dumps({"title": "mine"}))
    write_circuit_tracer(token_hand_graph(), tmp_path / "a")
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert index["title"] == "mine" and [g["slug"] for g in index["graphs"]] == ["a"]
