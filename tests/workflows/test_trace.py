"""`trace_image` and the demo's `trace_demo` / `describe_circuit` on the tiny sharp ViT.

The summary is checked against quantities computed here from the model and the written files:
the clean logits, the all-at-baseline run written as plain host hooks, the circuit and graph
read back from disk, and the pruning rerun with the configured thresholds.
"""

import json
import types

import pytest
import torch

import rrm_plugin
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.circuits.circuit import Circuit, run_circuits
from rrm_plugin.circuits.figure import top_patches
from rrm_plugin.circuits.influence import graph_scores, prune_by_influence
from rrm_plugin.replacement.splice import splice_saes
from rrm_plugin.workflows.trace import TraceConfig, trace_image


def _readout_by_hand(logits, cls):
    return {"logit": pytest.approx(float(logits[cls]), abs=1e-4),
            "adjusted_logit": pytest.approx(float(logits[cls]) - float(logits.mean()), abs=1e-4),
            "probability": pytest.approx(float(torch.softmax(logits.double(), -1)[cls]),
                                         abs=1e-5),
            "predicted_class": int(logits.argmax())}


def _all_at_baseline(vit, saes, image, baselines):
    hooks = []
    for h in saes:
        hooks += [(f"{h}.hook_sae_acts_post", lambda z, hook, b=baselines.features[h]:
                   b.expand_as(z)),
                  (f"{h}.hook_sae_error", lambda e, hook, b=baselines.errors[h]: b.expand_as(e))]
    with torch.no_grad(), splice_saes(vit, saes, keep_error=True):
        return vit.run_with_hooks(image[None], fwd_hooks=hooks)[0]


def _circuit_from_json(data, d_sae):
    latents = []
    for layer in data["layers"]:
        mask = torch.zeros(d_sae, dtype=torch.bool)
        mask[layer["features"]] = True
        latents.append(mask)
    return Circuit([layer["hook_name"] for layer in data["layers"]], latents,
                   torch.tensor([layer["error"] for layer in data["layers"]]))


def test_trace_summary_and_files(vit, saes, images, baselines, reference_images, tmp_path):
    image = images[0]
    config = TraceConfig(target_class=3, node_threshold=0.6, edge_threshold=0.9, viewer=False)
    out = tmp_path / "a" / "b"
    summary = trace_image(vit, saes, image, baselines=baselines, out_dir=out,
                          reference_images=reference_images[:6], config=config,
                          metadata={"note": "x"})
    with torch.no_grad():
        clean = vit(image[None])[0]
    assert summary["target_class"] == 3 and summary["metric"] == "adjusted_logit"
    assert summary["value"] == pytest.approx(float(clean[3] - clean.mean()), abs=1e-4)
    assert summary["clean"] == _readout_by_hand(clean, 3)
    assert summary["all_at_baseline"] == _readout_by_hand(
        _all_at_baseline(vit, saes, image, baselines), 3)
    assert summary["metadata"] == {"note": "x"}
    assert summary["files"] == sorted(["circuit.json", "circuit.png", "graph.json",
                                       "graph.lossless.json", "graph.lossless.safetensors",
                                       "summary.json"])
    assert json.loads((out / "summary.json").read_text()) == {
        k: v for k, v in summary.items() if k != "files"}
    assert (out / "circuit.png").read_bytes()[:4] == b"\x89PNG"

    graph = Graph.load(out / "graph.lossless")
    assert graph.target_class == 3 and graph.granularity == "feature"
    assert summary["graph_nodes"] == sum(len(layer) + 1 for layer in graph.layers) + 1
    assert summary["error_scores"] == pytest.approx([layer.error_score for layer in graph.layers])
    assert summary["feature_score_sum"] == pytest.approx(
        [float(layer.scores.sum()) for layer in graph.layers])
    scores = graph_scores(graph)
    assert summary["circuit_tracer_replacement_score"] == pytest.approx(scores.replacement)
    assert summary["circuit_tracer_completeness_score"] == pytest.approx(scores.completeness)
    readable = json.loads((out / "graph.json").read_text())
    assert readable["target"]["class"] == 3

    # The circuit is circuit-tracer pruning at the configured thresholds (not the defaults).
    pruned = prune_by_influence(graph, node_threshold=0.6, edge_threshold=0.9)
    expected = Circuit.from_graph(graph, pruned.node_masks, edge_masks=pruned.edge_masks,
                                  logit_edge_mask=pruned.logit_edge_mask)
    default = prune_by_influence(graph)
    assert sum(int(m.sum()) for m in default.node_masks) != expected.node_count
    data = json.loads((out / "circuit.json").read_text())
    assert data["node_count"] == expected.node_count == summary["circuit_nodes"] > 0
    assert summary["circuit_edges"] == len(expected.edges) == len(data["edges"])
    assert [layer["features"] for layer in data["layers"]] == [
        expected.layer_features(k) for k in range(len(graph.layers))]
    circuit = _circuit_from_json(data, d_sae=32)
    for mode in ("insertion", "deletion"):
        logits = run_circuits(vit, saes, image[None], circuit, baselines=baselines, mode=mode)[0]
        assert summary[mode] == _readout_by_hand(logits, 3)
    assert summary["insertion"] != summary["deletion"]

    # Thumbnails: each kept latent's top reference patches.
    features = {h: circuit.layer_features(k) for k, h in enumerate(circuit.hook_names)}
    examples = top_patches(vit, saes, reference_images[:6], features)
    assert data["thumbnails"] == {f"{h}/F{f}": [e._asdict() for e in ex]
                                  for (h, f), ex in examples.items()}
    assert data["thumbnails"]


def test_trace_predicted_class_token_nodes_and_viewer(vit, saes, images, baselines,
                                                      reference_images, tmp_path):
    image = images[1]
    config = TraceConfig(granularity="token", metric="logit")
    summary = trace_image(vit, saes, image, baselines=baselines, out_dir=tmp_path,
                          reference_images=reference_images[:4], config=config)
    with torch.no_grad():
        clean = vit(image[None])[0]
    predicted = int(clean.argmax())
    assert summary["target_class"] == predicted and summary["metric"] == "logit"
    assert summary["value"] == pytest.approx(float(clean[predicted]), abs=1e-4)
    assert summary["metadata"] == {}
    graph = Graph.load(tmp_path / "graph.lossless")
    assert graph.granularity == "token"
    assert {"circuit.html", "viewer.json"} <= set(summary["files"])


def test_describe_circuit_line():
    report = {"test_index": 7, "label": 3, "circuit_nodes": 12, "value": 4.256,
              "insertion": {"adjusted_logit": 3.5}, "deletion": {"adjusted_logit": -1.004},
              "all_at_baseline": {"adjusted_logit": 0.125}}
    from rrm_plugin.workflows.demo import describe_circuit

    assert describe_circuit(report) == (
        "image 7 (label 3): circuit of 12 nodes; adjusted logit clean 4.26, circuit only 3.50, "
        "circuit deleted -1.00, all at baseline 0.12 -> circuits/image_0007/circuit.png")


def test_trace_demo_on_the_tiny_model(monkeypatch, vit, saes, baselines, reference_images,
                                      tmp_path):
    from rrm_plugin.workflows import demo

    images = reference_images[:10]
    with torch.no_grad():
        predicted = vit(images).argmax(-1)
    labels = predicted.clone()
    labels[[1, 4, 6]] = (labels[[1, 4, 6]] + 1) % 5  # three wrongly classified images
    correct = [i for i in range(10) if i not in (1, 4, 6)]
    calls = []
    monkeypatch.setattr(rrm_plugin, "load_model", lambda name: calls.append(name) or vit)
    monkeypatch.setattr(rrm_plugin, "load_saes", lambda release: calls.append(release) or saes)
    monkeypatch.setattr(demo, "load_release_baselines",
                        lambda release, s: calls.append(("baselines", release)) or baselines)
    monkeypatch.setattr(rrm_plugin, "load_test_set", lambda name: calls.append(("test", name))
                        or types.SimpleNamespace(images=images, labels=labels))
    traced = []
    real_trace = demo.trace_image

    def spy(model, saes_, image, **kwargs):
        traced.append({**kwargs, "image": image})
        kwargs["config"] = TraceConfig(viewer=False)
        return real_trace(model, saes_, image, **kwargs)

    monkeypatch.setattr(demo, "trace_image", spy)
    result = demo.trace_demo(tmp_path, n_images=2, model_name="m", release="r", seed=5)
    assert calls == ["m", "r", ("baselines", "r"), ("test", "m")]
    order = torch.randperm(len(correct), generator=torch.Generator().manual_seed(5))
    chosen = sorted(correct[i] for i in order[:2].tolist())
    assert [r["test_index"] for r in result["images"]] == chosen
    assert [r["label"] for r in result["images"]] == [int(labels[i]) for i in chosen]
    assert result["figures"] == [f"circuits/image_{i:04d}/circuit.png" for i in chosen]
    assert [t["metadata"] for t in traced] == [
        {"model": "m", "release": "r", "test_index": i, "label": int(labels[i])} for i in chosen]
    assert all(t["config"] == TraceConfig() and t["reference_images"] is images for t in traced)
    assert all(torch.equal(t["image"], images[i]) for t, i in zip(traced, chosen, strict=True))
    assert all(t["baselines"] is baselines
               and t["out_dir"] == tmp_path / "circuits" / f"image_{i:04d}"
               for t, i in zip(traced, chosen, strict=True))
    root = tmp_path / "circuits"
    for i, report in zip(chosen, result["images"], strict=True):
        summary = json.loads((root / f"image_{i:04d}" / "summary.json").read_text())
        assert report == {"test_index": i, "label": int(labels[i]), **summary,
                          "files": report["files"]}
    assert json.loads((root / "circuits.json").read_text()) == json.loads(json.dumps(result))
    index = (root / "index.html").read_text()
    assert "rrm demo: circuits of held-out digits" in index
    for i in chosen:
        assert f"image_{i:04d}/circuit.html" in index and f"image {i}" in index


def test_trace_passes_its_settings_to_the_figure_viewer_and_files(
        monkeypatch, vit, saes, images, baselines, reference_images, tmp_path):
    """What `trace_image` hands to `plot_circuit` and `build_viewer` (both recorded here), the
    graph.json edge cap, and the metadata kept in the lossless graph."""
    import rrm_plugin.workflows.trace as trace_module
    from rrm_plugin.circuits.circuit import Circuit as CircuitType
    from rrm_plugin.lens.features import feature_lens

    calls = {}
    monkeypatch.setattr(trace_module, "plot_circuit",
                        lambda *args, **kwargs: calls.__setitem__("figure", (args, kwargs)))
    real_build_viewer = trace_module.build_viewer

    def build_viewer(graph, **kwargs):
        calls["viewer"] = (graph, dict(kwargs))
        return real_build_viewer(graph, **kwargs)

    monkeypatch.setattr(trace_module, "build_viewer", build_viewer)
    monkeypatch.setattr(trace_module, "write_viewer",
                        lambda out_dir, payload: calls.__setitem__("written", out_dir))

    def display(x):
        return x * 0.5 + 0.25

    config = TraceConfig(target_class=2, node_threshold=0.7, edge_threshold=0.95,
                         max_nodes_per_layer=3, max_json_edges=5)
    image, refs = images[2], reference_images[:5]
    summary = trace_image(vit, saes, image, baselines=baselines, out_dir=tmp_path,
                          reference_images=refs, config=config, metadata={"model": "tiny-x"},
                          display=display, class_names=list("abcdefghij"), cards=None)
    (graph, circuit, shown), kwargs = calls["figure"]
    assert graph.target_class == 2 and isinstance(circuit, CircuitType)
    assert circuit.node_count == summary["circuit_nodes"]
    torch.testing.assert_close(shown, display(image))
    features = {h: circuit.layer_features(k) for k, h in enumerate(circuit.hook_names)}
    assert kwargs.pop("examples") == top_patches(vit, saes, refs, features)
    torch.testing.assert_close(kwargs.pop("reference_images"), display(refs))
    classes = kwargs.pop("feature_classes")
    want_classes = feature_lens(vit, saes, top_k=1)
    assert set(classes) == set(want_classes)
    for h, fc in want_classes.items():
        assert torch.equal(classes[h], fc.top_classes[:, 0])
    assert kwargs == {
        "path": tmp_path / "circuit.png", "patch_size": vit.cfg.patch_size, "n_prefix": 1,
        "max_nodes_per_layer": 3,
        "title": (f"class 2: {summary['circuit_nodes']} nodes keep "
                  f"{summary['insertion']['adjusted_logit']:.2f} of {summary['value']:.2f} "
                  "adjusted logit"),
    }
    viewer_graph, viewer = calls["viewer"]
    assert viewer_graph is graph and calls["written"] == tmp_path
    assert viewer.pop("model") is vit and viewer.pop("saes") is saes
    assert viewer.pop("image") is image and viewer.pop("baselines") is baselines
    assert viewer.pop("display") is display
    # The viewer is built first (readouts "curve"): its batched rows give the summary's
    # insertion, deletion and all-at-baseline readouts, so none is passed in.
    assert viewer == {"class_names": list("abcdefghij"), "cards": None, "readouts": "curve",
                      "title": "tiny-x: class 2",
                      "default_params": {"node_threshold": 0.7, "edge_threshold": 0.95},
                      "warning": None}  # trace_image takes its baselines as given
    data = json.loads((tmp_path / "graph.json").read_text())
    assert len(data["edges"]) == 5 < data["edges_total"]
    assert Graph.load(tmp_path / "graph.lossless").metadata == {"model": "tiny-x",
                                                                "baselines": "median",
                                                                "edges": True}
