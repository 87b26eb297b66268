"""Attribution graphs: a hand-computed case, conservation, save/load, conversions, bad input."""

import json

import pytest
import torch

from rrm_plugin.attribution.baselines import Baselines, compute_baselines
from rrm_plugin.attribution.build import attribute, graphs_from_forward
from rrm_plugin.attribution.forward import attribution_forward
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.attribution.graph_views import graph_json, graph_networkx
from rrm_plugin.attribution.linearise import capture_constants, frozen
from rrm_plugin.io import CorruptFileError
from rrm_plugin.replacement.splice import splice_saes
from tests.attribution.conftest import random_saes, sharp_vit


def identity_after_block0():
    """Blocks 1 and 2 write nothing (zero W_O, b_O, W_out, b_out): x_2 = x_1 = x_0."""
    model = sharp_vit()
    with torch.no_grad():
        for b in (1, 2):
            block = model.blocks[b]
            for p in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
                p.zero_()
    return model


def test_hand_computed_scores_and_edges(reference_images, images):
    model = identity_after_block0()
    saes = random_saes(model)
    base = compute_baselines(model, saes, reference_images, statistic="mean", progress=False)
    image = images[:1]
    graph = attribute(model, saes, image, baselines=base, classes=[1])[0]

    with torch.no_grad(), splice_saes(model, saes, keep_error=True):
        _, cache = model.run_with_cache(image)
    h0, h1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
    sae0, sae1 = saes[h0], saes[h1]
    # By hand. Head: m = u . LN_f(x[CLS]) + const, u = W_H[:, 1] - mean_c W_H[:, c]. With the
    # final LayerNorm's scale frozen, dm/dx[CLS] = centre(w_f * u) / sigma_f; other tokens 0.
    W_H, w_f = model.head.W_H.detach(), model.ln_final.w.detach()
    u = W_H[:, 1] - W_H.mean(1)
    g = (w_f * u - (w_f * u).mean()) / cache["ln_final.hook_scale"][0, 0, 0]

    def sae_parts(h, sae):
        x = cache[f"{h}.hook_sae_input"][0]
        s = (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True)
        z = cache[f"{h}.hook_sae_acts_post"][0]
        return s, z, z - base.features[h], cache[f"{h}.hook_sae_error"][0] - base.errors[h]

    s1, z1, dz1, de1 = sae_parts(h1, sae1)
    s0, z0, dz0, de0 = sae_parts(h0, sae0)
    W_dec1, W_dec0 = sae1.W_dec.detach(), sae0.W_dec.detach()
    # Top layer: r_i = s_CLS (g . W_dec1[i]) dz1[CLS, i]; error: g . de1[CLS].
    ghat1_cls = s1[0, 0] * (W_dec1 @ g)
    top = graph.layers[1]
    torch.testing.assert_close(top.scores, (ghat1_cls * dz1[0])[top.features], rtol=1e-5,
                               atol=1e-7)
    # A float32 dot product of d_model terms, g centred and scaled another way than autograd
    # does: a few eps32 (1.2e-7) of sum |g_i de_i| (the score itself may cancel to far less).
    err_scale = float((g * de1[0]).abs().sum())
    assert top.error_score == pytest.approx(float(g @ de1[0]), rel=1e-5, abs=1e-6 * err_scale)
    # Edges through the identity block: only the CLS token of each active target carries
    # gradient, J_o[CLS] = ghat1[CLS, o] centre(W_enc1[:, o]) / (s1 + eps).
    W_enc1 = sae1.W_enc.detach()
    c1 = W_enc1 - W_enc1.mean(0)
    J_cls = (ghat1_cls * (z1[0] > 0))[:, None] * c1.T / (s1[0, 0] + 1e-5)  # [d_sae1, D]
    expected = (W_dec0 @ J_cls.T) * (s0[0, 0] * dz0[0])[:, None]  # [d_sae0, d_sae1]
    expected_err = J_cls @ de0[0]
    low = graph.layers[0]
    edges = graph.edges[0]
    torch.testing.assert_close(edges[:-1], expected[low.features][:, top.features], rtol=1e-4,
                               atol=1e-7)
    torch.testing.assert_close(edges[-1], expected_err[top.features], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(low.scores, expected.sum(1)[low.features], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("statistic", ["median", "mean"])
def test_conservation_layer_scores_are_the_first_order_change(vit, saes, images,
                                                               reference_images, statistic):
    """In the linearised model (error kept), a layer's node scores plus its error score equal
    the change of the metric when that layer's stream moves from its baseline to its value."""
    base = compute_baselines(vit, saes, reference_images, statistic=statistic, progress=False)
    image = images[:1]
    graph = attribute(vit, saes, image, baselines=base)[0]
    cls = graph.target_class
    with splice_saes(vit, saes, keep_error=True):
        constants = capture_constants(vit, saes, image)
        with frozen(vit, saes, constants), torch.no_grad():  # exactly affine
            for layer in graph.layers:
                h = layer.hook_name
                names = (f"{h}.hook_sae_output", f"{h}.hook_sae_acts_post")
                _, cache = vit.run_with_cache(image, names_filter=lambda n, names=names: n in names)
                x, z = cache[names[0]], cache[names[1]]
                # Stream minus its baseline: s (z - z~) W_dec + (e - e~).
                dx = ((z - base.features[h]) @ saes[h].W_dec.detach()) * constants.sae_std[h] + (
                    constants.errors[h] - base.errors[h])

                def metric(stream, h=h):
                    logits = vit.run_with_hooks(
                        image, fwd_hooks=[(f"{h}.hook_sae_output", lambda t, hook: stream)])
                    return float(logits[0, cls] - logits[0].mean())

                change = metric(x) - metric(x - dx)
                total = float(layer.scores.sum()) + layer.error_score
                assert total == pytest.approx(change, rel=1e-4, abs=1e-6)


def test_batched_graphs_equal_single_image_graphs(vit, saes, images, baselines):
    batched = attribute(vit, saes, images, baselines=baselines)
    for b, graph in enumerate(batched):
        single = attribute(vit, saes, images[b:b + 1], baselines=baselines)[0]
        assert single.target_class == graph.target_class
        for la, lb in zip(single.layers, graph.layers, strict=True):
            assert torch.equal(la.features, lb.features)
            torch.testing.assert_close(la.scores, lb.scores, atol=1e-6, rtol=1e-5)
        for ea, eb in zip(single.edges, graph.edges, strict=True):
            torch.testing.assert_close(ea, eb, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("granularity", ["feature", "token"])
def test_save_load_is_lossless(tmp_path, vit, saes, images, baselines, granularity):
    graph = attribute(vit, saes, images[:1], baselines=baselines, granularity=granularity,
                      metadata=[{"image": 0}])[0]
    json_path, tensor_path = graph.save(tmp_path / "g")
    assert json_path.name == "g.json" and tensor_path.name == "g.safetensors"
    loaded = Graph.load(tmp_path / "g.json")
    assert (loaded.target_class, loaded.metric, loaded.value, loaded.granularity) == (
        graph.target_class, graph.metric, graph.value, graph.granularity)
    assert loaded.metadata == graph.metadata and loaded.n_tokens == graph.n_tokens
    assert torch.equal(loaded.logits, graph.logits)
    for a, b in zip(loaded.layers, graph.layers, strict=True):
        assert (a.hook_name, a.block, a.d_sae, a.error_score) == (
            b.hook_name, b.block, b.d_sae, b.error_score)
        for name in ("features", "activations", "deltas", "scores"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        assert (a.tokens is None) == (b.tokens is None)
        if a.tokens is not None:
            assert torch.equal(a.tokens, b.tokens)
    for a, b in zip(loaded.edges, graph.edges, strict=True):
        assert torch.equal(a, b)


def test_corrupt_graph_files_are_reported(tmp_path, vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    json_path, tensor_path = graph.save(tmp_path / "g")
    meta = json.loads(json_path.read_text())
    meta["tensors"]["edges.0"][0] += 1
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match="'edges.0' has shape"):
        Graph.load(tmp_path / "g")
    json_path.write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        Graph.load(tmp_path / "g")
    json_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CorruptFileError, match="is not an attribution graph"):
        Graph.load(tmp_path / "g")
    graph.save(tmp_path / "g")
    tensor_path.write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="not a readable safetensors"):
        Graph.load(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="missing file"):
        Graph.load(tmp_path / "nothing")


def test_json_and_networkx_views(vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    data = graph_json(graph)
    n_nodes = sum(len(layer) for layer in graph.layers)
    assert len(data["nodes"]) == n_nodes and len(data["error_nodes"]) == 2
    json.dumps(data)  # plain JSON
    nx_graph = graph_networkx(graph)
    assert nx_graph.number_of_nodes() == n_nodes + 2 + 1
    into_logit = sum(d["weight"] for _, _, d in nx_graph.in_edges("logit", data=True))
    # Scores of the top layer and its error add up to the weight flowing into the logit.
    assert into_logit == pytest.approx(float(graph.logit_edges.sum()), rel=1e-5)
    first = data["nodes"][0]
    assert nx_graph.nodes[first["id"]]["score"] == first["score"]


def test_json_edges_match_the_matrices_and_max_edges_keeps_the_strongest(
    vit, saes, images, baselines
):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    full = graph_json(graph)
    # Every non-zero entry of every edge matrix (error rows included) and of the logit edges.
    expected = sum(int((e != 0).sum()) for e in graph.edges) + int((graph.logit_edges != 0).sum())
    assert len(full["edges"]) == full["edges_total"] == expected
    into_logit = [e["weight"] for e in full["edges"] if e["target"] == "logit"]
    assert sum(into_logit) == pytest.approx(float(graph.logit_edges.sum()), rel=1e-5)
    capped = graph_json(graph, max_edges=10)
    assert len(capped["edges"]) == 10 and capped["edges_total"] == expected
    strongest = sorted((abs(e["weight"]) for e in full["edges"]), reverse=True)[:10]
    assert sorted((abs(e["weight"]) for e in capped["edges"]), reverse=True) == strongest


def test_bad_inputs_are_named(vit, saes, images, baselines):
    with pytest.raises(ValueError, match="unknown target class 7; the model has classes 0..4"):
        attribute(vit, saes, images, baselines=baselines, classes=7)
    with pytest.raises(ValueError, match="unknown target metric 'prob'"):
        attribute(vit, saes, images, baselines=baselines, metric="prob")
    with pytest.raises(ValueError, match="are 16x16 pixels, model expects 8x8"):
        attribute(vit, saes, torch.rand(1, 3, 16, 16), baselines=baselines)
    with pytest.raises(ValueError, match="^edges are defined for the linearised model; pass "
                                         "edges=False to get node scores without the "
                                         "linearisation$"):
        attribute(vit, saes, images, baselines=baselines, linearise=False)
    wide = sharp_vit(d_model=24, d_head=6)
    with pytest.raises(ValueError, match="has d_in=16, but the residual stream there has width"):
        attribute(wide, saes, images, baselines=baselines)
    with pytest.raises(ValueError, match="blocks.<l>.hook_resid_post"):
        attribute(vit, {"blocks.0.hook_resid_pre": saes["blocks.0.hook_resid_post"]}, images,
                  baselines=baselines)
    gap = random_saes(sharp_vit(n_layers=4), layers=[0, 2])
    gap_base = Baselines.zeros(gap, n_tokens=5)
    with pytest.raises(ValueError, match="skip between"):
        attribute(sharp_vit(n_layers=4), gap, images, baselines=gap_base)


def test_node_scores_without_linearisation_differ(vit, saes, images, baselines):
    lin = attribute(vit, saes, images[:1], baselines=baselines)[0]
    plain = attribute(vit, saes, images[:1], baselines=baselines, linearise=False, edges=False)[0]
    assert not plain.linearised and lin.linearised
    assert not torch.allclose(lin.layers[0].scores, plain.layers[0].scores, rtol=1e-3)


def test_graphs_from_forward_defaults_and_node_only_graphs(vit, saes, images, baselines):
    forward = attribution_forward(vit, saes, images[:2], baselines=baselines, capture_blocks=True)
    full = attribute(vit, saes, images[:2], baselines=baselines)
    for b, graph in enumerate(graphs_from_forward(vit, saes, forward)):  # feature edges
        assert (graph.granularity, graph.n_tokens, graph.metadata) == ("feature", 5,
                                                                       {"edges": True})
        assert graph.target_class == int(forward.classes[b]) == full[b].target_class
        assert graph.value == float(forward.values[b]) and graph.linearised
        for ours, theirs in zip(graph.edges, full[b].edges, strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-6)
    nodes_only = graphs_from_forward(vit, saes, forward, edges=False,
                                     metadata=[{"image": 0}, {"image": 1}])
    for b, graph in enumerate(nodes_only):
        assert graph.metadata == {"image": b, "edges": False}
        sizes = [len(layer) for layer in graph.layers]
        assert [tuple(e.shape) for e in graph.edges] == [(sizes[0] + 1, sizes[1])]
        assert not graph.edges[0].any()
        for ours, theirs in zip(graph.layers, full[b].layers, strict=True):
            assert torch.equal(ours.features, theirs.features)
            assert torch.equal(ours.scores, theirs.scores)
    with pytest.raises(ValueError, match="^unknown granularity 'pixel'; expected 'feature' or "
                                         "'token'$"):
        graphs_from_forward(vit, saes, forward, granularity="pixel")


def test_attribute_metadata(vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines, metadata=[{"image": 5}])[0]
    assert graph.metadata == {"baselines": "median", "image": 5, "edges": True}
    plain = attribute(vit, saes, images[:1], baselines=baselines, linearise=False, edges=False)
    assert plain[0].metadata == {"baselines": "median", "edges": False}
    with pytest.raises(ValueError, match="^got 1 metadata dicts for 2 images$"):
        attribute(vit, saes, images[:2], baselines=baselines, metadata=[{}])


def test_node_scores_need_no_adjacent_layers(images):
    """Only edges join adjacent layers: node scores of SAEs on blocks 0 and 2 are computed."""
    model = sharp_vit(n_layers=4)
    gap = random_saes(model, layers=[0, 2])
    forward = attribution_forward(model, gap, images[:1],
                                  baselines=Baselines.zeros(gap, n_tokens=5))
    assert [layer.block for layer in forward.layers] == [0, 2] and forward.blocks == {}


def test_progress_bar_only_when_asked(vit, saes, images, baselines, capsys):
    attribute(vit, saes, images[:1], baselines=baselines)
    assert capsys.readouterr().err == ""
    attribute(vit, saes, images[:1], baselines=baselines, progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\redges:   0%|") and err.endswith(" \r")  # erased when done


def test_node_scores_need_no_edge_engine(vit, saes, images, baselines):
    """A block the edge engine refuses (flagged parallel, which Prisma's forward ignores) still
    gets node-only graphs; only edges ask for the engine."""
    vit.cfg.parallel_attn_mlp = True
    graph = attribute(vit, saes, images[:1], baselines=baselines, edges=False)[0]
    assert graph.linearised and sum(len(layer) for layer in graph.layers) > 0
    with pytest.raises(ValueError, match="the edge engine models pre-LayerNorm blocks"):
        attribute(vit, saes, images[:1], baselines=baselines)
