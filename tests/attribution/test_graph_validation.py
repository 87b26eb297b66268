"""`Graph.load` validates the structure of an edited graph file (issue 15 section 4): each edit
below used to load and run through pruning and `run_circuits`."""

import dataclasses
import json

import pytest
import torch

from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.io import CorruptFileError
from tests.attribution.hand_graphs import feature_hand_graph, sparse_token_hand_graph


@pytest.fixture
def saved(tmp_path, vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    graph.save(tmp_path / "g")
    return tmp_path / "g"


def _edit(path, change):
    meta = json.loads(path.with_suffix(".json").read_text())
    change(meta)
    path.with_suffix(".json").write_text(json.dumps(meta))


def _target(meta, key, value):
    meta["target"][key] = value


def _layer(k, key, value):
    return lambda meta: meta["layers"][k].__setitem__(key, value)


def _other_class(meta):
    meta["target"]["class"] = (meta["target"]["class"] + 1) % 5


def _skip_a_block(meta):
    meta["layers"][1].update(hook_name="blocks.5.hook_resid_post", block=5)


def _drop_last_layer(meta):
    meta["layers"].pop()


EDITS = {
    "unknown class": (lambda m: _target(m, "class", 7), "target class 7 is not one of the 5"),
    "negative class": (lambda m: _target(m, "class", -1), "target class -1 is not one of"),
    "another class": (_other_class, "differs from the logits'"),
    "unknown metric": (lambda m: _target(m, "metric", "probability"), "unknown metric"),
    "unknown granularity": (lambda m: m.__setitem__("granularity", "pixel"),
                            "unknown granularity 'pixel'"),
    "wrong block": (_layer(1, "block", 0), "layer 1 is 'blocks.1.hook_resid_post' but says "
                                           "block 0"),
    "non-consecutive blocks": (_skip_a_block, "block 0 is followed by 5"),
    "smaller d_sae": (_layer(0, "d_sae", 2), r"feature indices must be integers in \[0, 2\)"),
    "removed layer": (_drop_last_layer, "belong to no layer"),
    "token granularity without tokens": (lambda m: m.__setitem__("granularity", "token"),
                                         "token indices present iff granularity is 'token'"),
}


def test_unedited_graph_loads(saved):
    Graph.load(saved).check()


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_graph_is_refused_on_load(saved, edit):
    change, message = EDITS[edit]
    _edit(saved, change)
    with pytest.raises(CorruptFileError, match=message):
        Graph.load(saved)


def test_out_of_range_feature_index_is_refused(saved):
    from rrm_plugin.io import read_tensors, write_tensors

    tensors = read_tensors(saved.with_suffix(".safetensors"))
    features = tensors["layers.0.features"].clone()
    features[0] = 10_000  # the file stays well-formed: same names, shapes and dtypes
    tensors["layers.0.features"] = features
    write_tensors(saved.with_suffix(".safetensors"), tensors)
    with pytest.raises(CorruptFileError, match=r"layer 0 feature indices must be integers"):
        Graph.load(saved)


# ---- hand graphs: check() and the sparse file format ---------------------------------------

def _replace_layer(graph, k, **changes):
    layers = list(graph.layers)
    layers[k] = dataclasses.replace(layers[k], **changes)
    return dataclasses.replace(graph, layers=layers)


BAD_GRAPHS = {
    "2-D logits": (lambda g: dataclasses.replace(g, logits=g.logits[None]),
                   "target class 1 is not one of the 3 classes"),
    "class past the logits": (lambda g: dataclasses.replace(g, target_class=3),
                              "target class 3 is not one of the 3 classes"),
    "NaN logit": (lambda g: dataclasses.replace(g, logits=torch.tensor([1.0, 3.0, float("nan")])),
                  "logits contain NaN/inf"),
    "value off by 1e-3": (lambda g: dataclasses.replace(g, value=1.001),
                          "stored adjusted_logit 1.001 of class 1 differs from the logits' 1$"),
    "no layers": (lambda g: dataclasses.replace(g, layers=[], edges=[]),
                  "^invalid attribution graph: no layers$"),
    "block of another hook": (lambda g: _replace_layer(g, 0, block=1),
                              "layer 0 is 'blocks.0.hook_resid_post' but says block 1"),
    "empty dictionary": (lambda g: _replace_layer(g, 1, d_sae=0), "layer 1 has d_sae 0"),
    "short activations": (lambda g: _replace_layer(g, 0, activations=torch.ones(3)),
                          r"layer 0 activations have shape \[3\], expected \[2\]"),
    "short deltas": (lambda g: _replace_layer(g, 1, deltas=torch.ones(2)),
                     r"layer 1 deltas have shape \[2\], expected \[3\]"),
    "2-D scores": (lambda g: _replace_layer(g, 0, scores=torch.ones(2, 1)),
                   r"layer 0 scores have shape \[2, 1\], expected \[2\]"),
    "float features": (lambda g: _replace_layer(g, 0, features=torch.tensor([1.0, 4.0])),
                       r"layer 0 feature indices must be integers in \[0, 6\)"),
    "feature d_sae": (lambda g: _replace_layer(g, 1, features=torch.tensor([0, 2, 6])),
                      r"layer 1 feature indices must be integers in \[0, 6\)"),
    "negative feature": (lambda g: _replace_layer(g, 0, features=torch.tensor([-1, 4])),
                         r"layer 0 feature indices must be integers in \[0, 6\)"),
    "missing edge matrix": (lambda g: dataclasses.replace(g, edges=[]),
                            "graph has 2 layers but 0 edge matrices; expected one per adjacent"),
    "edge matrix without the error row": (
        lambda g: dataclasses.replace(g, edges=[g.edges[0][:2]]),
        r"edge matrix 0 has shape \[2, 3\], expected \[3, 3\]"),
}
BAD_TOKEN_GRAPHS = {
    "token past the end": (lambda g: _replace_layer(g, 1, tokens=torch.tensor([0, 5])),
                           r"layer 1 token indices must be in \[0, 5\)"),
    "negative token": (lambda g: _replace_layer(g, 0, tokens=torch.tensor([-1, 4])),
                       r"layer 0 token indices must be in \[0, 5\)"),
    "feature graph with tokens": (lambda g: dataclasses.replace(g, granularity="feature"),
                                  "layer 0: token indices present iff granularity is 'token'"),
}


@pytest.mark.parametrize("case", list(BAD_GRAPHS))
def test_check_names_what_does_not_fit(case):
    change, message = BAD_GRAPHS[case]
    with pytest.raises(CorruptFileError, match=message):
        change(feature_hand_graph()).check()


@pytest.mark.parametrize("case", list(BAD_TOKEN_GRAPHS))
def test_check_names_bad_token_indices(case):
    change, message = BAD_TOKEN_GRAPHS[case]
    with pytest.raises(CorruptFileError, match=message):
        change(sparse_token_hand_graph()).check()


def test_check_accepts_the_edges_of_what_is_valid():
    graph = feature_hand_graph()
    graph.check()
    sparse_token_hand_graph().check()
    dataclasses.replace(graph, value=1.0 + 1e-5).check()  # float32 rounding of the mean
    dataclasses.replace(graph, target_class=0, value=-1.0).check()
    dataclasses.replace(graph, metric="logit", value=3.0).check()
    dataclasses.replace(graph, logits=torch.tensor([1, 3, 2])).check()  # integer logits: exact
    # Hooks outside `blocks.` (other hosts) are not matched against their block.
    _replace_layer(graph, 0, hook_name="encoder.layer0").check()
    # A layer may be empty: its edge matrix has no columns.
    empty = _replace_layer(graph, 1, features=torch.zeros(0, dtype=torch.long),
                           activations=torch.zeros(0), deltas=torch.zeros(0),
                           scores=torch.zeros(0))
    dataclasses.replace(empty, edges=[torch.zeros(3, 0)]).check()


def _rewrite(stem, change_tensors=None, change_meta=None):
    """Edit a saved graph's tensors and JSON, keeping the JSON's shape list in step."""
    from rrm_plugin.io import read_tensors, write_tensors

    json_path = stem.with_name(stem.name + ".json")
    tensor_path = stem.with_name(stem.name + ".safetensors")
    meta = json.loads(json_path.read_text())
    if change_tensors is not None:
        tensors = dict(read_tensors(tensor_path))
        change_tensors(tensors)
        write_tensors(tensor_path, tensors)
        meta["tensors"] = {name: list(t.shape) for name, t in tensors.items()}
    if change_meta is not None:
        change_meta(meta)
    json_path.write_text(json.dumps(meta))


def test_sparse_graph_round_trip(tmp_path):
    graph = sparse_token_hand_graph()
    json_path, tensor_path = graph.save(tmp_path / "t.safetensors")
    assert (json_path.name, tensor_path.name) == ("t.json", "t.safetensors")
    meta = json.loads(json_path.read_text())
    assert meta["sparse_edges"] == {"0": [3, 2]} and meta["tensor_file"] == "t.safetensors"
    assert meta["tensors"]["edges.0.indices"] == [2, 4] and "edges.0" not in meta["tensors"]
    assert (meta["format"], meta["version"], meta["n_tokens"]) == (
        "rrm-attribution-graph", 1, 5)
    loaded = Graph.load(tmp_path / "t")
    assert (loaded.granularity, loaded.n_tokens, loaded.linearised, loaded.metric,
            loaded.value, loaded.target_class, loaded.metadata) == (
        "token", 5, False, "logit", 4.0, 0, {})
    assert loaded.edges[0].is_sparse and loaded.edges[0].is_coalesced()
    assert torch.equal(loaded.edges[0].indices(), graph.edges[0].indices())
    assert torch.equal(loaded.edges[0].values(), graph.edges[0].values())
    assert loaded.node_table() == graph.node_table()
    assert [la.error_score for la in loaded.layers] == [0.25, -0.125]
    assert [(la.hook_name, la.block, la.d_sae) for la in loaded.layers] == [
        ("blocks.2.hook_resid_post", 2, 4), ("blocks.3.hook_resid_post", 3, 4)]
    # One stored edge: the shape comes from the file, not from the largest index.
    one = torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([0.5]), (3, 2),
                                  check_invariants=True)
    dataclasses.replace(graph, edges=[one]).save(tmp_path / "one")
    assert Graph.load(tmp_path / "one").edges[0].to_dense().tolist() == [[0.5, 0.0], [0.0, 0.0],
                                                                          [0.0, 0.0]]


def test_graph_file_names_and_defaults(tmp_path):
    graph = feature_hand_graph()
    json_path, tensor_path = graph.save(tmp_path / "g.v2")  # not a graph suffix: kept
    assert (json_path.name, tensor_path.name) == ("g.v2.json", "g.v2.safetensors")
    loaded = Graph.load(tmp_path / "g.v2.safetensors")
    assert (loaded.metadata, loaded.linearised, loaded.granularity) == ({"image": 7}, True,
                                                                        "feature")
    _rewrite(tmp_path / "g.v2", change_meta=lambda m: m.pop("metadata"))
    assert Graph.load(json_path).metadata == {}


def test_wrong_format_and_version_are_named(tmp_path):
    feature_hand_graph().save(tmp_path / "g")
    _rewrite(tmp_path / "g", change_meta=lambda m: m.update(version=2))
    with pytest.raises(CorruptFileError, match="has graph version 2; this rrm-plugin reads "
                                               "version 1"):
        Graph.load(tmp_path / "g")
    _rewrite(tmp_path / "g", change_meta=lambda m: m.update(format="other", version=1))
    with pytest.raises(CorruptFileError, match=r"is not an attribution graph \(format 'other'\)"):
        Graph.load(tmp_path / "g")
    _rewrite(tmp_path / "g", change_meta=lambda m: m.update(format="rrm-attribution-graph",
                                                            target={"class": 1}))
    with pytest.raises(CorruptFileError, match=r"graph file is incomplete or corrupt "
                                               r"\(KeyError\('metric'\)\)"):
        Graph.load(tmp_path / "g")
    (tmp_path / "g.json").write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match=r"is not an attribution graph \(format None\)"):
        Graph.load(tmp_path / "g")


def _set(name, value):
    return lambda tensors: tensors.__setitem__(name, value)


INDICES = torch.tensor([[0, 1, 2, 2], [0, 1, 0, 1]])
BAD_SPARSE = {
    "3-D shape": (None, lambda m: m["sparse_edges"].__setitem__("0", [3, 2, 1]),
                  r"indices \[2, 4\] \(torch.int64\) and values \[4\]; expected \[2, nnz\] "
                  r"int64 and \[nnz\]"),
    "int32 indices": (_set("edges.0.indices", INDICES.int()), None,
                      r"indices \[2, 4\] \(torch.int32\)"),
    "3-D indices": (_set("edges.0.indices", INDICES[..., None]), None, r"indices \[2, 4, 1\]"),
    "three index rows": (_set("edges.0.indices", torch.cat([INDICES, INDICES[:1]])), None,
                         r"indices \[3, 4\]"),
    "short values": (_set("edges.0.values", torch.ones(3)), None,
                     r"indices \[2, 4\] \(torch.int64\) and values \[3\]"),
    "column past the end": (_set("edges.0.indices", torch.tensor([[0, 1, 2, 2], [0, 1, 0, 2]])),
                            None, r"indices outside its shape \[3, 2\]"),
    "row past the end": (_set("edges.0.indices", torch.tensor([[0, 1, 2, 3], [0, 1, 0, 1]])),
                         None, r"indices outside its shape \[3, 2\]"),
    "negative column": (_set("edges.0.indices", torch.tensor([[0, 1, 2, 2], [0, -1, 0, 1]])),
                        None, r"indices outside its shape \[3, 2\]"),
}


@pytest.mark.parametrize("case", list(BAD_SPARSE))
def test_bad_sparse_edge_files_are_refused(tmp_path, case):
    change_tensors, change_meta, message = BAD_SPARSE[case]
    sparse_token_hand_graph().save(tmp_path / "t")
    _rewrite(tmp_path / "t", change_tensors, change_meta)
    with pytest.raises(CorruptFileError, match=f"sparse edge matrix 0 has {message}"):
        Graph.load(tmp_path / "t")
