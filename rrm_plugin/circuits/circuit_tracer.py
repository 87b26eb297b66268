"""Export token-granularity graphs as circuit-tracer graph files (its local frontend reads them).

circuit-tracer (`decoderesearch/circuit-tracer`, `circuit_tracer/frontend/graph_models.py`) writes
one `<slug>.json` per graph: `metadata` (slug, scan, transcoder_list, prompt_tokens, prompt,
node_threshold, schema_version), `qParams` (pinnedIds, supernodes, linkType, clickedId, sg_pos),
`nodes` and `links` (`source`, `target`, signed `weight`), plus a `graph-metadata.json` index of
the folder. Its node kinds map to ours as:

- prompt tokens: the class token `CLS`, registers `reg<i>`, and patches `p(row,col)`; one
  `embedding` node per token (layer `"E"`), as circuit-tracer always keeps them;
- feature nodes: `(block, token, latent)` -> id `{block}_{latent}_{token}`, layer `str(block)`,
  `ctx_idx` = token, `feature` = Cantor pairing of (block, latent), as circuit-tracer numbers them;
- error nodes: our one error node per SAE layer is summed over tokens; it sits on token 0 (the
  class token the head reads) with id `err_{block}_0` (circuit-tracer's own `0_{layer}_{pos}`
  would equal the id of latent `layer` of block 0 at that token);
- the logit node: the target class at token 0, layer `str(top block + 2)` (circuit-tracer puts
  logits one layer above its last transcoder layer + 1).

Nodes and links are those kept by `prune_by_influence`; `influence` is circuit-tracer's
cumulative influence share at the node's rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rrm_plugin.attribution.graph import Graph, edge_entries
from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import read_json, write_json

FEATURE_TYPE = "cross layer transcoder"  # the frontend draws these as feature nodes
ERROR_TYPE = "mlp reconstruction error"


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def prompt_tokens(n_tokens: int, n_prefix: int = 1) -> list[str]:
    """`CLS`, `reg0..`, then `p(row,col)` over the square patch grid (`p(i)` if not square)."""
    if not 0 <= n_prefix <= n_tokens:
        raise RRMUserError(f"n_prefix must be in [0, n_tokens={n_tokens}], got {n_prefix}")
    prefix = (["CLS"] + [f"reg{i}" for i in range(n_prefix - 1)])[:n_prefix]
    n_patches = n_tokens - n_prefix
    side = math.isqrt(n_patches)
    if side * side == n_patches:
        patches = [f"p({i // side},{i % side})" for i in range(n_patches)]
    else:
        patches = [f"p({i})" for i in range(n_patches)]
    return prefix + patches


def circuit_tracer_dict(
    graph: Graph,
    *,
    slug: str,
    scan: str = "rrm",
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    n_prefix: int = 1,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The graph file as a dict (see the module docstring for the mapping)."""
    if graph.granularity != "token":
        raise RRMUserError("circuit-tracer places every node on a token; trace the graph with "
                           "granularity='token' (got a 'feature'-granularity graph)")
    tokens = prompt_tokens(graph.n_tokens, n_prefix)
    pruned = prune_by_influence(graph, node_threshold=node_threshold,
                                edge_threshold=edge_threshold)
    influence = torch.cat(pruned.influence)
    order = torch.sort(influence, descending=True).indices
    cumulative = torch.empty_like(influence)
    cumulative[order] = influence[order].cumsum(0) / influence.sum().clamp(min=1e-30)
    offsets = [0]
    for layer in graph.layers:
        offsets.append(offsets[-1] + len(layer) + 1)

    ids: list[list[str]] = []
    nodes: list[dict[str, Any]] = [
        {"node_id": f"E_{i}_{i}", "feature": i, "layer": "E", "ctx_idx": i,
         "feature_type": "embedding", "jsNodeId": f"E_{i}-{i}", "clerp": token}
        for i, token in enumerate(tokens)]
    for k, layer in enumerate(graph.layers):
        block = layer.block
        layer_ids = []
        for j, (f, t) in enumerate(zip(layer.features.tolist(), layer.tokens.tolist(),
                                       strict=True)):
            node = f"{block}_{f}_{t}"
            layer_ids.append(node)
            if pruned.node_masks[k][j]:
                nodes.append({
                    "node_id": node, "feature": _cantor(block, f), "layer": str(block),
                    "ctx_idx": t, "feature_type": FEATURE_TYPE, "jsNodeId": f"{block}_{f}-0",
                    "clerp": f"{layer.hook_name} latent {f} @ {tokens[t]}",
                    "influence": float(cumulative[offsets[k] + j]),
                    "activation": float(layer.activations[j])})
        error = f"err_{block}_0"
        layer_ids.append(error)
        if pruned.node_masks[k][-1]:
            nodes.append({
                "node_id": error, "feature": -1, "layer": str(block), "ctx_idx": 0,
                "feature_type": ERROR_TYPE, "jsNodeId": f"{block}_0-0",
                "clerp": f"{layer.hook_name} SAE error (all tokens)",
                "influence": float(cumulative[offsets[k] + len(layer)])})
        ids.append(layer_ids)

    cls = graph.target_class
    name = class_names[cls] if class_names is not None else str(cls)
    prob = float(graph.logits.softmax(-1)[cls])
    logit_layer = str(graph.layers[-1].block + 2)
    logit_id = f"{logit_layer}_{cls}_0"
    nodes.append({"node_id": logit_id, "feature": cls, "layer": logit_layer, "ctx_idx": 0,
                  "feature_type": "logit", "token_prob": prob, "is_target_logit": True,
                  "jsNodeId": f"L_{cls}-0", "clerp": f'Output "{name}" (p={prob:.3f})'})

    links = []
    for k, (edge, mask) in enumerate(zip(graph.edges, pruned.edge_masks, strict=True)):
        rows, cols, weights = edge_entries(edge, mask)
        for i, o, weight in zip(rows.tolist(), cols.tolist(), weights.tolist(), strict=True):
            links.append({"source": ids[k][i], "target": ids[k + 1][o], "weight": weight})
    logit_edges = graph.logit_edges
    for i in torch.nonzero(pruned.logit_edge_mask & (logit_edges != 0))[:, 0].tolist():
        links.append({"source": ids[-1][i], "target": logit_id, "weight": float(logit_edges[i])})

    return {
        "metadata": {"slug": slug, "scan": scan, "transcoder_list": [],
                     "prompt_tokens": tokens, "prompt": " ".join(tokens),
                     "node_threshold": node_threshold, "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                    "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def write_circuit_tracer(
    graph: Graph,
    path: str | Path,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    slug: str | None = None,
    scan: str = "rrm",
    n_prefix: int = 1,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a token-granularity graph as a circuit-tracer graph file (`<slug>.json`) pruned by
    influence, and add its metadata to the folder's `graph-metadata.json`.

    Args:
        path: The graph file (`.json` appended if missing); its stem is the slug unless `slug`
            is given.
        n_prefix: Tokens before the patches (CLS and registers).
        class_names: Class names for the logit node's label.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    data = circuit_tracer_dict(graph, slug=slug or path.stem, scan=scan,
                               node_threshold=node_threshold, edge_threshold=edge_threshold,
                               n_prefix=n_prefix, class_names=class_names)
    write_json(path, data)
    index_path = path.parent / "graph-metadata.json"
    index = read_json(index_path) if index_path.is_file() else {"graphs": []}
    graphs = [g for g in index.get("graphs", []) if g.get("slug") != data["metadata"]["slug"]]
    write_json(index_path, {**index, "graphs": [*graphs, data["metadata"]]})
    return path
