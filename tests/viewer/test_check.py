"""`viewer.json` is checked against its graph as strictly as the lossless graph file is."""

import copy
import json

import pytest
import torch

from rrm_plugin.attribution.graph import Graph
from rrm_plugin.io import CorruptFileError
from rrm_plugin.viewer.build import build_viewer
from rrm_plugin.viewer.check import check_payload
from rrm_plugin.viewer.payload import ImageContext, viewer_payload
from rrm_plugin.viewer.steps import budget_steps, influence_steps, paper_steps
from tests.viewer.conftest import hand_graph

READOUT = {"logit": 2.0, "adjusted_logit": 1.5, "probability": 0.75, "predicted_class": 1}
PNG = "data:image/png;base64,iVBORw0KGgo="
WHERE, OF = "t/viewer.json", "of graph.lossless.json"


def full_payload() -> dict:
    """The hand graph's payload with every optional part (image, heat, lens, runs)."""
    graph = hand_graph()
    steps = influence_steps(graph, node_thresholds=(0.5, 0.8), edge_thresholds=(0.98,)) + \
        paper_steps(graph) + budget_steps(graph, budgets=(2,))
    context = ImageContext(
        image_png=b"\x89PNG", grid=(2, 2), n_prefix=1,
        patch_activations=torch.arange(20.0).reshape(5, 4),
        lens_top=[[("cat", 1.0)]] * 5, runs=[{"insertion": READOUT, "deletion": READOUT}] *
        len(steps), reference={"clean": READOUT})
    payload = viewer_payload(graph, steps, context=context, title="hand")
    payload["cards"]["1"].update(hook_name="blocks.0.hook_resid_post", feature=7,
                                 top_images=[{"png": PNG, "activation": 2.0}])
    return json.loads(json.dumps(payload))  # as read back from the file


def check(payload) -> None:
    check_payload(payload, hand_graph(), where=WHERE, graph_name="graph.lossless.json")


def test_the_written_payload_passes():
    check(full_payload())


def _set(path, value):
    def change(p):
        *head, last = path
        for key in head:
            p = p[key]
        p[last] = value
    return change


def _append(path, value):
    def change(p):
        for key in path:
            p = p[key]
        p.append(value)
    return change


CASES = [
    (_set(["target", "class"], 99), "target.class", "99", f"1 (the class {OF})"),
    (_set(["target", "class"], 1.0), "target.class", "1.0", f"1 (the class {OF})"),
    (_set(["target", "value"], float("inf")), "target.value", "inf", "a finite number"),
    (_set(["n_tokens", ], 6), "n_tokens", "6", f"5 (the tokens {OF})"),
    (_set(["layers", 0, "hook_name"], "<b>"), "layers",
     "[{'hook_name': '<b>', 'block': 0, 'd_sae': 8, 'n_nodes': 2}, {'hook_name': 'bloc"
     "... (141 characters)", "[{'hook_name': 'blocks.0.hook_resid_post', 'block': 0, 'd_sae': 8, "
     "'n_nodes': 2}, {'hook_name': 'blocks.1.hook_resid_post', 'block': 1, 'd_sae': 8, "
     f"'n_nodes': 3}}] (the layers {OF})"),
    (_set(["metadata"], {"x": 1}), "metadata", "{'x': 1}", f"{{}} (the metadata {OF})"),
    (_set(["nodes", "feature", 0], 4), "nodes.feature[0]", "4", f"3 (node 0 {OF})"),
    (_set(["nodes", "score", 1], float("nan")), "nodes.score[1]", "nan", f"3.0 (node 1 {OF})"),
    (_set(["nodes", "kind", 2], 0), "nodes.kind[2]", "0", f"1 (node 2 {OF})"),
    (_append(["nodes", "kind"], 0), "nodes.kind", "9 entries", "8"),
    (_set(["nodes", "influence", 0], "x"), "nodes.influence[0]", "'x'", "a finite number"),
    (_set(["nodes", "influence", 1], 0.5), "nodes.influence[1]", "0.5",
     f"0.266667 (its influence {OF}, within 0.0001)"),
    (_set(["edges", "target", 0], 99), "edges.target[0]", "99", "an integer in [0, 7]"),
    (_set(["edges", "target", 0], 6), "edges.target[0]", "6",
     "a node of the layer above node 0, in [3, 6)"),
    (_set(["edges", "weight", 0], 5.0), "edges.weight[0]", "5.0",
     f"1.0 (a non-zero edge 0 -> 3 {OF})"),
    (_set(["edges", "source", 2], 0), "edges.source[2]", "0",
     "edges in increasing order without repeats"),
    (_set(["edges", "total"], 8), "edges.total", "8", f"7 (the non-zero edges {OF})"),
    (_set(["steps", 0, "mode"], "<script>"), "steps[0].mode", "'<script>'",
     "one of ['budget', 'edge_rule', 'influence', 'node_rule', 'threshold_rule']"),
    (_set(["steps", 0, "params", "node_threshold"], 2.0), "steps[0].params.node_threshold",
     "2.0", "a finite number in [0.0, 1.0]"),
    (_set(["steps", 0, "nodes"], "!!"), "steps[0].nodes", "'!!'", "base64 text of 1 bytes"),
    (_set(["steps", 0, "nodes"], "/w=="), "steps[0].nodes", "bits set past the last entry",
     "a mask of 7 entries"),
    (_set(["steps", 0, "edges"], "AAAA"), "steps[0].edges", "base64 of 3 bytes", "1 bytes"),
    (_set(["steps", 1, "runs", "deletion", "probability"], 2.0),
     "steps[1].runs.deletion.probability", "2.0", "a finite number in [0.0, 1.0]"),
    (_set(["default_step"], 99), "default_step", "99", "an integer in [0, 35]"),
    (_set(["steps", 35, "params", "node_budget"], 8), "steps[35].params.node_budget", "8",
     "an integer in [1, 7]"),
    (_set(["steps", 34, "params", "node_budget"], 0.5), "steps[34].params.node_budget", "0.5",
     "an integer in [1, 7]"),
    (_set(["scores", "replacement"], None), "scores.replacement", "None", "a finite number"),
    (_set(["reference", "clean", "predicted_class"], 3), "reference.clean.predicted_class", "3",
     "an integer in [0, 2]"),
    (_set(["image"], "javascript:alert(1)"), "image", "'javascript:alert(1)'",
     "a data:image/png or data:image/jpeg base64 URL or null"),
    (_set(["heat", "values"], "AAAA"), "heat.values", "base64 of 3 bytes", "20 bytes"),
    (_set(["heat", "scale", 0], -1.0), "heat.scale[0]", "-1.0", "a finite number in [0.0, inf]"),
    (_set(["grid"], [4, 2]), "grid", "[4, 2]",
     "a patch grid of the 4 patches of heat.n_patches, after 1 prefix tokens"),
    (_set(["cards", "2"], {}), "cards.2", "a card keyed '2'", "keys that are latent node indices"),
    (_set(["cards", "01"], {}), "cards.01", "a card keyed '01'",
     "keys that are latent node indices"),
    (_set(["cards", "1", "hook_name"], "blocks.1.hook_resid_post"), "cards.1.hook_name",
     "'blocks.1.hook_resid_post'", f"'blocks.0.hook_resid_post' (node 1 {OF})"),
    (_set(["cards", "1", "top_images", 0, "png"], "data:image/png;base64,x' onerror='y"),
     "cards.1.top_images[0].png", "\"data:image/png;base64,x' onerror='y\"",
     "a data:image/png or data:image/jpeg base64 URL"),
    (_set(["cards", "1", "onclick"], "x"), "cards.1.onclick", "an unknown key",
     "only the keys ['density_images', 'density_tokens', 'feature', 'hook_name', 'layer', "
     "'lens_top', 'max_activation', 'source', 'top_images', 'type']"),
    (_set(["script"], "x"), "script", "an unknown key",
     "only the keys ['cards', 'default_step', 'edges', 'granularity', 'grid', 'heat', 'image', "
     "'layers', 'metadata', 'n_prefix', 'n_tokens', 'nodes', 'reference', 'schema', 'scores', "
     "'steps', 'target', 'title', 'warning']"),
]


@pytest.mark.parametrize("change, field, found, expected", CASES,
                         ids=[c[1] + "-" + str(i) for i, c in enumerate(CASES)])
def test_an_edited_payload_is_refused_in_one_line(change, field, found, expected):
    payload = full_payload()
    change(payload)
    with pytest.raises(CorruptFileError) as err:
        check(payload)
    assert str(err.value) == f"{WHERE}: field {field}: found {found}, expected {expected}"


def test_real_payloads_pass_against_the_saved_graph(tmp_path, vit, saes, images, baselines,
                                                    graph, token_graph):
    """Payloads of real graphs (both granularities, with the model) pass against the graph as
    `rrm view` loads it from disk."""
    for g in (graph, token_graph):
        payload = build_viewer(g, model=vit, saes=saes, image=images[0], baselines=baselines)
        g.save(tmp_path / g.granularity / "graph.lossless")
        loaded = Graph.load(tmp_path / g.granularity / "graph.lossless")
        check_payload(json.loads(json.dumps(payload)), loaded, where="viewer.json")
        wrong = copy.deepcopy(json.loads(json.dumps(payload)))
        wrong["target"]["class"] = (g.target_class + 1) % g.logits.shape[-1]
        with pytest.raises(CorruptFileError, match=r"^viewer.json: field target.class: found "
                           rf"{wrong['target']['class']}, expected {g.target_class} \(the class "
                           r"of the graph\)$"):
            check_payload(wrong, loaded, where="viewer.json")
