"""Check a saved viewer payload (`viewer.json`) against the graph it was built from.

`rrm view` rewrites a page from `viewer.json`; the file may have been edited, so it is checked as
strictly as `Graph.load` checks the lossless graph: every key known, every value typed and
finite, the target, layers, nodes and embedded edges equal to the graph's, masks and heat maps of
the right sizes, card keys that are latent nodes. A failure is one line naming the file, the
field, what was found and what was expected.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rrm_plugin.attribution.graph import Graph
from rrm_plugin.viewer.cards import check_card
from rrm_plugin.viewer.fields import Fields, Said
from rrm_plugin.viewer.payload import (
    NODE_FEATURE,
    PAYLOAD_SCHEMA,
    _flat_edges,
    _nodes,
    _round,
    between_kept,
    node_offsets,
)

TOP_KEYS = {"schema", "title", "target", "granularity", "n_tokens", "n_prefix", "grid", "layers",
            "nodes", "edges", "steps", "default_step", "scores", "reference", "image", "heat",
            "cards", "metadata"}
STEP_PARAMS = {"influence": {"node_threshold", "edge_threshold"}, "node_rule": {"p"},
               "edge_rule": {"p"}, "threshold_rule": {"tau"}, "budget": {"node_budget"}}
READOUT = {"logit", "adjusted_logit", "probability", "predicted_class"}
# Influence is recomputed here with float32 products whose summation order may differ from the
# machine that traced (threads, device) on top of the 6-significant-digit rounding of the file.
INFLUENCE_ATOL = 1e-4


def check_payload(payload: Any, graph: Graph, *, where: str, graph_name: str = "the graph") -> None:
    """Raise CorruptFileError unless `payload` is a viewer payload of `graph`."""
    f = Fields(where)
    if not isinstance(payload, dict) or payload.get("schema") != PAYLOAD_SCHEMA:
        found = payload.get("schema") if isinstance(payload, dict) else type(payload).__name__
        raise f.fail("schema", found, f"{PAYLOAD_SCHEMA!r} (a viewer payload)")
    # "warning" is optional: pages written before it existed carry none.
    f.obj(payload, "", required=TOP_KEYS, optional={"warning"})
    f.text(payload.get("warning"), "warning", nullable=True)
    of = f"of {graph_name}"
    f.text(payload["title"], "title")
    target = f.obj(payload["target"], "target", required={"class", "metric", "value"})
    f.equal(target["class"], "target.class", graph.target_class, f"the class {of}")
    f.equal(target["metric"], "target.metric", graph.metric, f"the metric {of}")
    f.equal(f.number(target["value"], "target.value"), "target.value", graph.value,
            f"the value {of}")
    f.equal(payload["granularity"], "granularity", graph.granularity, f"the granularity {of}")
    f.equal(payload["n_tokens"], "n_tokens", graph.n_tokens, f"the tokens {of}")
    f.integer(payload["n_prefix"], "n_prefix", low=0, high=graph.n_tokens)
    grid = f.array(payload["grid"], "grid", length=2)
    for i, side in enumerate(grid):
        f.integer(side, f"grid[{i}]", low=0, high=graph.n_tokens)
    layers = [{"hook_name": lay.hook_name, "block": lay.block, "d_sae": lay.d_sae,
               "n_nodes": len(lay)} for lay in graph.layers]
    f.equal(payload["layers"], "layers", layers, f"the layers {of}")
    f.equal(payload["metadata"], "metadata", graph.metadata, f"the metadata {of}")
    nodes = _check_nodes(f, payload["nodes"], graph, of)
    n_edges = _check_edges(f, payload["edges"], graph, of)
    _check_steps(f, payload, n_nodes=len(nodes["kind"]), n_edges=n_edges, graph=graph)
    scores = f.obj(payload["scores"], "scores", required={"replacement", "completeness"})
    for key, value in scores.items():
        f.number(value, f"scores.{key}")
    reference = f.obj(payload["reference"], "reference", required=set(),
                      optional={"clean", "all_at_baseline"})
    for key, value in reference.items():
        _check_readout(f, value, f"reference.{key}", graph)
    f.image_url(payload["image"], "image", nullable=True)
    _check_heat(f, payload, n_latent=sum(len(lay) for lay in graph.layers))
    cards = payload["cards"]
    if not isinstance(cards, dict):
        raise f.fail("cards", cards, "an object of cards keyed by node index")
    offsets = node_offsets(graph)
    for key, card in cards.items():
        index = int(key) if key.isdigit() and str(int(key)) == key else -1
        if not 0 <= index < len(nodes["kind"]) or nodes["kind"][index] != NODE_FEATURE:
            raise f.fail(f"cards.{key}", Said(f"a card keyed {key!r}"),
                         "keys that are latent node indices")
        check_card(card, f, f"cards.{key}", in_payload=True)
        k = nodes["layer"][index]
        for name, value in (("hook_name", graph.layers[k].hook_name),
                            ("feature", int(graph.layers[k].features[index - offsets[k]]))):
            if name in card:
                f.equal(card[name], f"cards.{key}.{name}", value, f"node {index} {of}")


def _check_nodes(f: Fields, nodes: Any, graph: Graph, of: str) -> dict[str, list]:
    expected = _nodes(graph)
    f.obj(nodes, "nodes", required=set(expected))
    n = len(expected["kind"])
    for key, want in expected.items():
        got = f.array(nodes[key], f"nodes.{key}", length=n)
        for i, (value, good) in enumerate(zip(got, want, strict=True)):
            if key == "influence":
                f.number(value, f"nodes.influence[{i}]")
                if abs(value - good) > INFLUENCE_ATOL:
                    raise f.fail(f"nodes.influence[{i}]", value,
                                 f"{good} (its influence {of}, within {INFLUENCE_ATOL})")
            elif type(value) is not type(good) or value != good:
                raise f.fail(f"nodes.{key}[{i}]", value, f"{good!r} (node {i} {of})")
    return nodes


def _check_edges(f: Fields, edges: Any, graph: Graph, of: str) -> int:
    """The embedded edges: graph edges (increasing flat index), with the graph's weights."""
    f.obj(edges, "edges", required={"source", "target", "weight", "total"})
    _, _, weights = _flat_edges(graph)
    f.equal(edges["total"], "edges.total", int((weights != 0).sum()),
            f"the non-zero edges {of}")
    count = len(f.array(edges["source"], "edges.source"))
    offsets = node_offsets(graph)
    n_nodes = offsets[-1] + 1
    # Flat index of (source, target): each edge block is row-major after the ones below it.
    starts = np.cumsum([0] + [int(e.numel()) for e in graph.edges])
    cols = [int(e.shape[1]) for e in graph.edges] + [1]
    previous, flats = -1, []
    for key in ("target", "weight"):
        f.array(edges[key], f"edges.{key}", length=count)
    for e in range(count):
        s = f.integer(edges["source"][e], f"edges.source[{e}]", low=0, high=n_nodes - 2)
        t = f.integer(edges["target"][e], f"edges.target[{e}]", low=0, high=n_nodes - 1)
        k = int(np.searchsorted(offsets, s, side="right") - 1)
        # Edges go to the latents of the layer above (not its error node), or to the logit.
        low, high = (n_nodes - 1, n_nodes) if k + 1 == len(graph.layers) else \
            (offsets[k + 1], offsets[k + 2] - 1)
        if not low <= t < high:
            raise f.fail(f"edges.target[{e}]", t, f"a node of the layer above node {s}, in "
                         f"[{low}, {high})")
        flat = int(starts[k]) + (s - offsets[k]) * cols[k] + (t - low)
        if flat <= previous:
            raise f.fail(f"edges.source[{e}]", s, "edges in increasing order without repeats")
        previous = flat
        flats.append(flat)
        f.number(edges["weight"][e], f"edges.weight[{e}]")
    rounded = _round(weights[flats]) if flats else []
    for e, (weight, good) in enumerate(zip(edges["weight"], rounded, strict=True)):
        if weight != good or good == 0:
            raise f.fail(f"edges.weight[{e}]", weight, f"{good!r} (a non-zero edge "
                         f"{edges['source'][e]} -> {edges['target'][e]} {of})")
    return count


def _check_steps(f: Fields, payload: dict, *, n_nodes: int, n_edges: int, graph: Graph) -> None:
    steps = f.array(payload["steps"], "steps")
    ends = (torch.tensor(payload["edges"]["source"], dtype=torch.long).reshape(n_edges),
            torch.tensor(payload["edges"]["target"], dtype=torch.long).reshape(n_edges))
    if not steps:
        raise f.fail("steps", steps, "at least one circuit step")
    total = payload["edges"]["total"]
    for i, step in enumerate(steps):
        at = f"steps[{i}]"
        # "runs" is optional per step: `rrm trace --readouts curve` measures only some.
        f.obj(step, at, required={"mode", "params", "node_count", "edge_count", "nodes", "edges"},
              optional={"runs"})
        if step["mode"] not in STEP_PARAMS:
            raise f.fail(f"{at}.mode", step["mode"], f"one of {sorted(STEP_PARAMS)}")
        params = f.obj(step["params"], f"{at}.params", required=STEP_PARAMS[step["mode"]])
        for key, value in params.items():
            if key == "node_budget":
                f.integer(value, f"{at}.params.{key}", low=1, high=n_nodes - 1)
            else:
                f.number(value, f"{at}.params.{key}", low=0.0, high=1.0)
        bits = _mask(f, step["nodes"], f"{at}.nodes", n_nodes - 1)
        f.equal(step["node_count"], f"{at}.node_count", bits, "the nodes its mask keeps")
        # One bit per embedded edge whose two ends the step keeps (`between_kept`).
        nodes = torch.from_numpy(_bits(f, step["nodes"], f"{at}.nodes", n_nodes - 1))
        _mask(f, step["edges"], f"{at}.edges", int(between_kept(nodes, *ends).sum()))
        f.integer(step["edge_count"], f"{at}.edge_count", low=0, high=total)
        if "runs" in step:
            runs = f.obj(step["runs"], f"{at}.runs", required={"insertion", "deletion"})
            for mode, readout in runs.items():
                _check_readout(f, readout, f"{at}.runs.{mode}", graph)
    f.integer(payload["default_step"], "default_step", low=0, high=len(steps) - 1)


def _bits(f: Fields, text: Any, field: str, n: int) -> np.ndarray:
    """A little-endian packed mask of `n` entries as booleans (padding bits must be 0)."""
    data = np.frombuffer(f.b64(text, field, n_bytes=math.ceil(n / 8)), dtype=np.uint8)
    bits = np.unpackbits(data, bitorder="little")
    if bits[n:].any():
        raise f.fail(field, Said("bits set past the last entry"), f"a mask of {n} entries")
    return bits[:n].astype(bool)


def _mask(f: Fields, text: Any, field: str, n: int) -> int:
    """Bits set in a little-endian packed mask of `n` entries (padding bits must be 0)."""
    return int(_bits(f, text, field, n).sum())


def _check_readout(f: Fields, readout: Any, field: str, graph: Graph) -> None:
    f.obj(readout, field, required=READOUT)
    for key in ("logit", "adjusted_logit"):
        f.number(readout[key], f"{field}.{key}")
    f.number(readout["probability"], f"{field}.probability", low=0.0, high=1.0)
    f.integer(readout["predicted_class"], f"{field}.predicted_class", low=0,
              high=int(graph.logits.shape[-1]) - 1)


def _check_heat(f: Fields, payload: dict, *, n_latent: int) -> None:
    heat = payload["heat"]
    if heat is None:
        return
    f.obj(heat, "heat", required={"scale", "values", "n_patches"})
    rows, cols = payload["grid"]
    patches = f.integer(heat["n_patches"], "heat.n_patches", low=1)
    if rows * cols != patches or payload["n_prefix"] + patches > payload["n_tokens"]:
        raise f.fail("grid", payload["grid"], f"a patch grid of the {patches} patches of "
                     f"heat.n_patches, after {payload['n_prefix']} prefix tokens")
    scale = f.array(heat["scale"], "heat.scale", length=n_latent)
    for i, value in enumerate(scale):
        f.number(value, f"heat.scale[{i}]", low=0.0)
    f.b64(heat["values"], "heat.values", n_bytes=n_latent * patches)
