"""The viewer's payload: node order, edges, precomputed circuits, heat maps, cards, rendering."""

import base64
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from rrm_plugin.circuits.circuit import Circuit, run_circuits
from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.circuits.pruning import PAPER_SWEEP, edge_rule, node_rule_on_graph
from rrm_plugin.viewer.build import build_viewer, merge_cards
from rrm_plugin.viewer.context import image_context, patch_activations
from rrm_plugin.viewer.payload import viewer_payload
from rrm_plugin.viewer.render import render_html
from rrm_plugin.viewer.steps import influence_steps, paper_steps
from tests.viewer.conftest import hand_graph


def bits(b64: str, n: int) -> list[bool]:
    """Independent decoder: bit j of byte i is entry 8 i + j."""
    data = base64.b64decode(b64)
    return [bool((data[i // 8] >> (i % 8)) & 1) for i in range(n)]


def step_edges(payload: dict, i: int) -> list[bool]:
    """Independent decoder of step i's edge mask over every embedded edge: its bits cover, in
    order, the embedded edges whose two ends the step keeps (the logit node always); the other
    edges are not in the circuit."""
    n = len(payload["nodes"]["kind"]) - 1
    kept = bits(payload["steps"][i]["nodes"], n) + [True]
    ends = [kept[s] and kept[t] for s, t in zip(payload["edges"]["source"],
                                                payload["edges"]["target"], strict=True)]
    flags = iter(bits(payload["steps"][i]["edges"], sum(ends)))
    return [next(flags) if end else False for end in ends]


def test_step_edge_masks_have_one_bit_per_edge_between_kept_nodes(graph):
    steps = influence_steps(graph, node_thresholds=(0.3, 1.0), edge_thresholds=(0.9,))
    payload = viewer_payload(graph, steps + paper_steps(graph))
    sizes = [len(base64.b64decode(row["edges"])) for row in payload["steps"]]
    e = len(payload["edges"]["source"])
    # The small circuit's mask is shorter than one bit per embedded edge.
    assert sizes[0] < -(-e // 8) and max(sizes) <= -(-e // 8)
    # A step that keeps an edge without one of its ends cannot be written.
    flagged = step_edges(payload, 0)
    dropped = payload["edges"]["source"][flagged.index(True)]
    nodes = steps[0].nodes.clone()
    nodes[dropped] = False
    with pytest.raises(ValueError, match="step 0 keeps an edge whose source or target it drops"):
        viewer_payload(graph, [dataclasses.replace(steps[0], nodes=nodes)])


def test_hand_graph_nodes_and_edges():
    graph = hand_graph()
    payload = viewer_payload(graph, paper_steps(graph))
    nodes = payload["nodes"]
    # Per layer its latents then its error node, the logit node last.
    assert nodes["layer"] == [0, 0, 0, 1, 1, 1, 1, 2]
    assert nodes["feature"] == [3, 7, -1, 1, 4, 5, -1, -1]
    assert nodes["kind"] == [0, 0, 1, 0, 0, 0, 1, 2]
    assert nodes["score"] == [-1.0, 3.0, 0.5, 2.5, -1.0, 0.0, 0.25, 1.75]
    edges = payload["edges"]
    got = set(zip(edges["source"], edges["target"], edges["weight"], strict=True))
    assert got == {(0, 3, 1.0), (0, 5, -2.0), (1, 4, 3.0), (2, 3, 0.5),
                   (3, 7, 2.5), (4, 7, -1.0), (6, 7, 0.25)}
    assert edges["total"] == 7


def test_hand_graph_keeps_the_strongest_edges_by_magnitude():
    graph = hand_graph()
    edges = viewer_payload(graph, paper_steps(graph), max_edges=3, edges_per_node=0)["edges"]
    got = set(zip(edges["source"], edges["target"], edges["weight"], strict=True))
    assert got == {(1, 4, 3.0), (3, 7, 2.5), (0, 5, -2.0)}
    assert edges["total"] == 7


def test_hand_graph_influence():
    # Logit draws 2.5 / 1 / 0.25 (|.|, row-normalised) from L1/F1, L1/F4, L1 error.
    graph = hand_graph()
    influence = viewer_payload(graph, paper_steps(graph))["nodes"]["influence"]
    w = torch.tensor([2.5, 1.0, 0.0, 0.25]) / 3.75
    # L1/F1 reads 1 from F3 and 0.5 from the error (of 1.5); L1/F4 reads all from F7.
    f3 = w[0] * 1 / 1.5
    f7 = w[1]
    err0 = w[0] * 0.5 / 1.5
    f5_to_f3 = 0.0  # F5 has no influence on the logit
    expected = [float(f3) + f5_to_f3, float(f7), float(err0), *w.tolist(), 1.0]
    assert influence == pytest.approx(expected, rel=1e-5)


def test_influence_steps_are_python_pruning(graph):
    steps = influence_steps(graph, node_thresholds=(0.3, 0.8, 1.0),
                            edge_thresholds=(0.9, 0.98))
    payload = viewer_payload(graph, steps)
    n = len(payload["nodes"]["kind"]) - 1
    assert payload["steps"][payload["default_step"]]["params"] == {
        "node_threshold": 0.8, "edge_threshold": 0.98}
    counts = set()
    for row in payload["steps"]:
        params = row["params"]
        pruned = prune_by_influence(graph, **params)
        expected = [bool(v) for m in pruned.node_masks for v in m.tolist()]
        assert bits(row["nodes"], n) == expected, params
        circuit = Circuit.from_graph(graph, pruned.node_masks, edge_masks=pruned.edge_masks,
                                     logit_edge_mask=pruned.logit_edge_mask)
        assert row["node_count"] == circuit.node_count
        assert row["edge_count"] == len(circuit.edges)
        # The embedded edges flagged in this step are exactly the circuit's edges.
        ids = _ids(payload)
        flagged = step_edges(payload, payload["steps"].index(row))
        drawn = {(ids[s], ids[t]) for s, t, f in zip(payload["edges"]["source"],
                                                     payload["edges"]["target"], flagged,
                                                     strict=True) if f}
        assert drawn == {(s, t) for s, t, _ in circuit.edges}
        counts.add(row["node_count"])
    assert len(counts) > 1, "thresholds should give circuits of different sizes"


def _ids(payload):
    nodes = payload["nodes"]
    out = []
    for layer, feature, kind in zip(nodes["layer"], nodes["feature"], nodes["kind"], strict=True):
        out.append("logit" if kind == 2 else f"L{layer}/error" if kind == 1
                   else f"L{layer}/F{feature}")
    return out


def test_paper_steps_are_python_rules(graph):
    payload = viewer_payload(graph, paper_steps(graph))
    n = len(payload["nodes"]["kind"]) - 1
    rows = {(r["mode"], next(iter(r["params"].values()))): r for r in payload["steps"]}
    for p in PAPER_SWEEP:
        for mode, masks in (("node_rule", node_rule_on_graph(graph, p=p)),
                            ("edge_rule", edge_rule(graph, p=p))):
            expected = [bool(v) for m in masks for v in m.tolist()]
            assert bits(rows[mode, p]["nodes"], n) == expected, (mode, p)
    tau = node_rule_on_graph(graph, tau=0.5)
    assert bits(rows["threshold_rule", 0.5]["nodes"], n) == [bool(v) for m in tau
                                                            for v in m.tolist()]


def test_default_thresholds_off_the_grid_are_slider_positions(graph):
    payload = build_viewer(graph, default_params={"node_threshold": 0.83, "edge_threshold": 0.97})
    assert payload["steps"][payload["default_step"]]["params"] == {
        "node_threshold": 0.83, "edge_threshold": 0.97}


def test_patch_activations_match_the_sae_on_the_clean_stream(vit, saes, images, graph):
    # Independent path: the unspliced model's stream encoded by each SAE.
    _, cache = vit.run_with_cache(images[:1])
    rows = []
    for layer in graph.layers:
        acts = saes[layer.hook_name].encode(cache[layer.hook_name])[0, 1:]  # patches only
        rows.append(acts[:, layer.features].T)
    expected = torch.cat(rows)
    got = patch_activations(vit, saes, images[0], graph)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.shape[1] == (images.shape[-1] // vit.cfg.patch_size) ** 2


def test_token_nodes_are_active_on_their_own_patch_only(vit, saes, images, token_graph):
    got = patch_activations(vit, saes, images[0], token_graph)
    _, cache = vit.run_with_cache(images[:1])
    row = 0
    for layer in token_graph.layers:
        acts = saes[layer.hook_name].encode(cache[layer.hook_name])[0]
        for t, f in zip(layer.tokens.tolist(), layer.features.tolist(), strict=True):
            expected = torch.zeros(got.shape[1])
            if t >= 1:
                expected[t - 1] = acts[t, f]
            torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)
            row += 1
    assert row == len(got)


def test_heat_maps_are_quantised_per_node(vit, saes, images, graph, baselines):
    steps = paper_steps(graph)[:2]
    context = image_context(vit, saes, images[0], graph, steps, baselines=baselines)
    payload = viewer_payload(graph, steps, context=context)
    heat = payload["heat"]
    raw = torch.tensor(list(base64.b64decode(heat["values"])), dtype=torch.float32)
    raw = raw.reshape(-1, heat["n_patches"])
    scale = torch.tensor(heat["scale"])
    acts = context.patch_activations.clamp(min=0)
    torch.testing.assert_close(raw / 255 * scale[:, None], acts, atol=float(scale.max()) / 255,
                               rtol=0)
    assert payload["image"].startswith("data:image/png;base64,")


def test_step_runs_equal_single_circuit_runs(vit, saes, images, graph, baselines):
    steps = influence_steps(graph, node_thresholds=(0.2, 0.8, 1.0), edge_thresholds=(0.98,))
    steps += paper_steps(graph)[:3]
    context = image_context(vit, saes, images[0], graph, steps, baselines=baselines)
    cls = graph.target_class
    for step, runs in zip(steps, context.runs, strict=True):
        circuit = Circuit.from_graph(graph, step.layer_masks(graph))
        for mode in ("insertion", "deletion"):
            logits = run_circuits(vit, saes, images[:1], circuit, baselines=baselines,
                                  mode=mode)[0]
            assert runs[mode]["logit"] == pytest.approx(float(logits[cls]), abs=1e-4)
            assert runs[mode]["adjusted_logit"] == pytest.approx(
                float(logits[cls] - logits.mean()), abs=1e-4)


def test_cards_attach_by_hook_and_feature():
    graph = hand_graph()
    payload = viewer_payload(graph, paper_steps(graph))
    card = {"layer": 1, "feature": 4, "hook_name": "blocks.1.hook_resid_post",
            "density_tokens": 0.01, "density_images": 0.2, "max_activation": 3.0,
            "lens_top": [{"class": "cat", "score": 1.0}], "top_images": [], "type": None}
    cards = {"schema": "rrm-feature-cards/1", "model": "m", "release": "r",
             "cards": {"1:4": card}}
    merged = merge_cards(payload, cards)["cards"]
    assert set(merged) == {"4"}  # viewer index of L1/F4
    assert merged["4"]["density_images"] == 0.2
    assert viewer_payload(graph, paper_steps(graph), cards=cards)["cards"]["4"]["feature"] == 4
    with pytest.raises(ValueError, match=r"^feature cards: field schema: found 'other', expected "
                       r"'rrm-feature-cards/1' \(a feature-cards file\)$"):
        viewer_payload(graph, paper_steps(graph), cards={"schema": "other"})


def test_page_is_self_contained_and_escapes_the_payload():
    graph = hand_graph()
    graph.metadata = {"file": "</script><script>alert(1)</script>"}
    payload = viewer_payload(graph, paper_steps(graph), title="<b>x</b>")
    page = render_html(payload)
    assert page.count("</script>") == 2  # the data block and the code block
    assert "<title>&lt;b&gt;x&lt;/b&gt;</title>" in page
    data = re.search(r'id="rrm-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["metadata"]["file"] == graph.metadata["file"]
    # Nothing is fetched: no URLs in attributes, and a CSP that forbids loading anything.
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "default-src 'none'" in page


def test_budget_steps_keep_the_most_influential_nodes(graph):
    from rrm_plugin.circuits.edge_readers import layered_adjacency, layered_influence
    from rrm_plugin.viewer.steps import budget_steps

    # Oracle: the influence recomputed here, rounded as the JSON carries it, ranked by numpy.
    influence = torch.cat(layered_influence(layered_adjacency(graph))).double().numpy()
    influence = np.array([float(f"{v:.6g}") for v in influence])
    n = len(influence)
    ranking = np.lexsort((np.arange(n), -influence))
    steps = budget_steps(graph, budgets=(1, 5, 10, 10_000))
    assert [s.params["node_budget"] for s in steps] == [1, 5, 10, n]
    for step in steps:
        b = step.params["node_budget"]
        assert set(torch.nonzero(step.nodes)[:, 0].tolist()) == set(ranking[:b].tolist())
        masks = step.layer_masks(graph)
        for k, edges in enumerate(step.edge_masks):
            assert torch.equal(edges, masks[k][:, None] & masks[k + 1][None, :-1])
        assert torch.equal(step.logit_edges, masks[-1])
    payload = viewer_payload(graph, paper_steps(graph) + steps)
    rows = [r for r in payload["steps"] if r["mode"] == "budget"]
    assert [r["node_count"] for r in rows] == [1, 5, 10, n]


def test_each_node_carries_its_strongest_edges(graph):
    from rrm_plugin.viewer.payload import _flat_edges

    sources, targets, weights = (t.tolist() for t in _flat_edges(graph))
    nonzero = [e for e in range(len(weights)) if weights[e] != 0]
    assert len(nonzero) > 100
    per_node, top = 2, 20
    # Oracle with plain loops: the `top` strongest, and each node's 2 strongest in and out.
    order = sorted(nonzero, key=lambda e: (-abs(weights[e]), e))
    expected = set(order[:top])
    for ends in (sources, targets):
        seen: dict[int, int] = {}
        for e in order:
            if seen.get(ends[e], 0) < per_node:
                expected.add(e)
                seen[ends[e]] = seen.get(ends[e], 0) + 1
    edges = viewer_payload(graph, paper_steps(graph), max_edges=top,
                           edges_per_node=per_node)["edges"]
    got = set(zip(edges["source"], edges["target"], strict=True))
    assert got == {(sources[e], targets[e]) for e in expected}
    assert top < len(got) < len(nonzero)
