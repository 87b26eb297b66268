"""`Graph.load` validates the structure of an edited graph file (issue 15 section 4): each edit
below used to load and run through pruning and `run_circuits`."""

import json

import pytest

from rrm_plugin.attribution.graph import Graph, attribute
from rrm_plugin.io import CorruptFileError


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
