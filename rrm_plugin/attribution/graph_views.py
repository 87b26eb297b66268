"""Views of an attribution graph: plain JSON (what `graph.json` holds) and networkx."""

from __future__ import annotations

from typing import Any

import torch

from rrm_plugin.attribution.graph import (
    LOGIT_ID,
    Graph,
    edge_entries,
    error_id,
    feature_tokens,
    node_id,
)


def graph_json(
    graph: Graph, *, min_abs_edge: float = 0.0, max_edges: int | None = None
) -> dict[str, Any]:
    """Everything as plain JSON: nodes, error nodes, logit node and non-zero edges.

    `max_edges` keeps only the strongest edges by |weight| (a ViT-B graph has millions;
    `save` keeps them all); `edges_total` says how many there were.
    """
    nodes = graph.node_table()
    ids = [[node_id(k, f, t) for f, t in feature_tokens(layer)]
           for k, layer in enumerate(graph.layers)]
    top = len(graph.layers) - 1
    ids[top] = ids[top] + [error_id(top)]
    # One (matrix, row, column, weight) table over all edge matrices and the logit edges.
    matrices = [*graph.edges, graph.logit_edges[:, None]]
    parts, part_weights = [], []
    for k, edge in enumerate(matrices):
        rows, cols, weight = edge_entries(edge)
        keep = weight.abs() > min_abs_edge
        parts.append(torch.stack([torch.full_like(rows[keep], k), rows[keep], cols[keep]], 1))
        part_weights.append(weight[keep].float())
    index = torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long)
    weights = torch.cat(part_weights)
    total = len(weights)
    if max_edges is not None and total > max_edges:
        keep = weights.abs().topk(max_edges).indices.sort().values
        index, weights = index[keep], weights[keep]
    edges = []
    for (k, i, o), weight in zip(index.tolist(), weights.tolist(), strict=True):
        if k == top:  # logit edges
            edges.append({"source": ids[top][i], "target": LOGIT_ID, "weight": weight})
        else:
            source = ids[k][i] if i < len(ids[k]) else error_id(k)
            edges.append({"source": source, "target": ids[k + 1][o], "weight": weight})
    return {
        "target": {"class": graph.target_class, "metric": graph.metric, "value": graph.value},
        "granularity": graph.granularity, "linearised": graph.linearised,
        "nodes": nodes,
        "error_nodes": [{"id": error_id(k), "layer": k, "hook_name": layer.hook_name,
                         "score": layer.error_score} for k, layer in enumerate(graph.layers)],
        "logit_node": {"id": LOGIT_ID, "class": graph.target_class, "value": graph.value},
        "edges": edges, "edges_total": total, "metadata": graph.metadata,
    }


def graph_networkx(graph: Graph):
    """A `networkx.DiGraph`: edge weight = attribution, node attributes as `node_table`."""
    import networkx as nx

    out = nx.DiGraph(target_class=graph.target_class, metric=graph.metric, value=graph.value)
    data = graph_json(graph)
    for node in data["nodes"]:
        out.add_node(node["id"], kind="feature", **node)
    for node in data["error_nodes"]:
        out.add_node(node["id"], kind="error", **node)
    out.add_node(LOGIT_ID, kind="logit", **data["logit_node"])
    for edge in data["edges"]:
        out.add_edge(edge["source"], edge["target"], weight=edge["weight"])
    return out
