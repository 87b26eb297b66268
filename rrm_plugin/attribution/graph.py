"""Attribution graphs of the residual replacement model (docs/method.md section 3): the data.

Nodes are SAE latents `(layer, latent)` summed over tokens (or `(layer, token, latent)` with
`granularity="token"`), one error node per layer (a leaf: credit reaches it but never flows
through it), and the logit node. Edges join adjacent layers; the top SAE layer connects to the
logit node with its node scores. Every number is gradient x (activation - baseline) in the
linearised model, so a node's score equals the sum of its out-edges.

A `Graph` saves losslessly as `<stem>.json` (structure, target, metadata) plus
`<stem>.safetensors` (tensors). `attribution.build.attribute` builds graphs;
`attribution.graph_views` turns them into plain JSON or networkx.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rrm_plugin.attribution.targets import METRICS, metric_values
from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import CorruptFileError, read_json, read_tensors, write_json, write_tensors

Granularity = Literal["feature", "token"]
GRAPH_FORMAT = "rrm-attribution-graph"
GRAPH_VERSION = 1


@dataclass
class GraphLayer:
    """The nodes of one SAE layer.

    Args:
        hook_name: Hook point of the SAE.
        block: Block whose output the SAE reads.
        d_sae: Dictionary size.
        features: Latent index of each node.
        tokens: Token position of each node (token granularity), else None.
        activations: Activation of each node (summed over tokens for latent nodes).
        deltas: Activation minus baseline (summed likewise).
        scores: Node scores: gradient x (activation - baseline).
        error_score: Score of the layer's error node.
    """

    hook_name: str
    block: int
    d_sae: int
    features: Int[Tensor, " n"]
    tokens: Int[Tensor, " n"] | None
    activations: Float[Tensor, " n"]
    deltas: Float[Tensor, " n"]
    scores: Float[Tensor, " n"]
    error_score: float

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class Graph:
    """Attribution graph of one image and target.

    Args:
        layers: SAE layers, bottom to top.
        edges: `edges[k]` has shape `[len(layers[k]) + 1, len(layers[k + 1])]`: rows are the
            sources of layer k (last row: its error node), columns the latent nodes of layer k+1.
            Dense, or (token graphs built with `EngineConfig(token_top_k=...)`) sparse COO
            tensors holding each target's strongest in-edges and its error edge.
        target_class: Class whose logit is attributed.
        metric: `"adjusted_logit"` or `"logit"`.
        value: The metric at the image.
        logits: Model logits at the image.
        granularity: `"feature"` (latent nodes) or `"token"` (token-latent nodes).
        n_tokens: Token positions of the model.
        linearised: Whether attention, LayerNorm, GELU and SAE std were frozen in the backward pass.
        metadata: Free-form JSON-able information (model, release, image index, baselines).
    """

    layers: list[GraphLayer]
    edges: list[Float[Tensor, "src_plus_error tgt"]]
    target_class: int
    metric: str
    value: float
    logits: Float[Tensor, " classes"]
    granularity: str = "feature"
    n_tokens: int = 0
    linearised: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def logit_edges(self) -> Float[Tensor, " top_plus_error"]:
        """Edges from the top SAE layer (and its error node) into the logit node."""
        top = self.layers[-1]
        return torch.cat([top.scores, torch.tensor([top.error_score])])

    @property
    def error_scores(self) -> Float[Tensor, " layers"]:
        return torch.tensor([layer.error_score for layer in self.layers])

    def node_table(self) -> list[dict[str, Any]]:
        """One dict per latent node: layer, hook, feature, token, activation, delta, score."""
        rows = []
        for k, layer in enumerate(self.layers):
            tokens = layer.tokens.tolist() if layer.tokens is not None else [None] * len(layer)
            for j, (f, t) in enumerate(zip(layer.features.tolist(), tokens, strict=True)):
                rows.append({
                    "id": node_id(k, f, t), "layer": k, "hook_name": layer.hook_name,
                    "feature": f, "token": t, "activation": float(layer.activations[j]),
                    "delta": float(layer.deltas[j]), "score": float(layer.scores[j]),
                })
        return rows

    @property
    def sparse_edges(self) -> bool:
        """Whether the edge matrices are sparse (top-k token graphs)."""
        return any(edge.is_sparse for edge in self.edges)

    def require_dense_edges(self, what: str) -> None:
        """Refuse sparse (top-k) edge matrices in code that needs every edge as a dense matrix."""
        if self.sparse_edges:
            raise RRMUserError(
                f"{what} needs dense edge matrices; this token graph keeps only each node's "
                "strongest in-edges (EngineConfig(token_top_k=...)). Prune it with "
                "prune_by_influence, or attribute without token_top_k if it fits in memory")

    # ---- serialisation -------------------------------------------------------------------
    def _tensors(self) -> dict[str, Tensor]:
        tensors = {"logits": self.logits, "error_scores": self.error_scores}
        for k, layer in enumerate(self.layers):
            for name in ("features", "activations", "deltas", "scores"):
                tensors[f"layers.{k}.{name}"] = getattr(layer, name)
            if layer.tokens is not None:
                tensors[f"layers.{k}.tokens"] = layer.tokens
        for k, edge in enumerate(self.edges):
            if edge.is_sparse:  # safetensors holds dense arrays: COO indices and values
                edge = edge.coalesce()
                tensors[f"edges.{k}.indices"] = edge.indices()
                tensors[f"edges.{k}.values"] = edge.values()
            else:
                tensors[f"edges.{k}"] = edge
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    @staticmethod
    def _tensor_names(n_layers: int, tensors: Mapping[str, Tensor]) -> list[str]:
        names = ["logits", "error_scores"]
        for k in range(n_layers - 1):
            names += [f"edges.{k}.indices", f"edges.{k}.values"] if f"edges.{k}.indices" in \
                tensors else [f"edges.{k}"]
        for k in range(n_layers):
            names += [f"layers.{k}.{n}" for n in ("features", "activations", "deltas", "scores")]
            if f"layers.{k}.tokens" in tensors:
                names.append(f"layers.{k}.tokens")
        return names

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write `<stem>.json` and `<stem>.safetensors` (atomically); returns both paths."""
        json_path, tensor_path = _graph_paths(path)
        tensors = self._tensors()
        write_tensors(tensor_path, tensors)
        write_json(json_path, {
            "format": GRAPH_FORMAT, "version": GRAPH_VERSION, "granularity": self.granularity,
            "n_tokens": self.n_tokens, "linearised": self.linearised,
            "target": {"class": self.target_class, "metric": self.metric, "value": self.value},
            "layers": [{"hook_name": layer.hook_name, "block": layer.block, "d_sae": layer.d_sae}
                       for layer in self.layers],
            "tensors": {name: list(t.shape) for name, t in tensors.items()},
            "sparse_edges": {str(k): list(e.shape) for k, e in enumerate(self.edges)
                             if e.is_sparse},
            "tensor_file": tensor_path.name, "metadata": self.metadata,
        })
        return json_path, tensor_path

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """Read a graph written by `save`, verifying every tensor's name and shape."""
        json_path, tensor_path = _graph_paths(path)
        meta = read_json(json_path)
        if not isinstance(meta, dict) or meta.get("format") != GRAPH_FORMAT:
            raise CorruptFileError(f"{json_path} is not an attribution graph (format "
                                   f"{meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("version") != GRAPH_VERSION:
            raise CorruptFileError(f"{json_path} has graph version {meta.get('version')!r}; "
                                   f"this rrm-plugin reads version {GRAPH_VERSION}")
        try:
            shapes = {name: tuple(shape) for name, shape in meta["tensors"].items()}
            tensors = read_tensors(tensor_path, expected_shapes=shapes)
            error_scores = tensors["error_scores"].tolist()
            layers = []
            for k, info in enumerate(meta["layers"]):
                layers.append(GraphLayer(
                    hook_name=info["hook_name"], block=int(info["block"]), d_sae=int(info["d_sae"]),
                    features=tensors[f"layers.{k}.features"],
                    tokens=tensors.get(f"layers.{k}.tokens"),
                    activations=tensors[f"layers.{k}.activations"],
                    deltas=tensors[f"layers.{k}.deltas"], scores=tensors[f"layers.{k}.scores"],
                    error_score=error_scores[k],
                ))
            sparse = {int(k): tuple(shape) for k, shape in meta.get("sparse_edges", {}).items()}
            edges = [_sparse_edges(tensors, k, sparse[k], json_path) if k in sparse
                     else tensors[f"edges.{k}"] for k in range(len(layers) - 1)]
            stray = sorted(set(tensors) - set(cls._tensor_names(len(layers), tensors)))
            if stray:  # e.g. a layer removed from the JSON but not from the tensor file
                raise CorruptFileError(f"{json_path}: tensors {stray} belong to no layer of the "
                                       f"{len(layers)} listed")
            target = meta["target"]
            graph = cls(
                layers=layers, edges=edges, target_class=int(target["class"]),
                metric=target["metric"], value=float(target["value"]), logits=tensors["logits"],
                granularity=meta["granularity"], n_tokens=int(meta["n_tokens"]),
                linearised=bool(meta["linearised"]), metadata=meta.get("metadata", {}),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            if isinstance(err, CorruptFileError):
                raise
            raise CorruptFileError(f"{json_path}: graph file is incomplete or corrupt ({err!r})") \
                from err
        graph.check()
        return graph

    def check(self) -> None:
        """Raise CorruptFileError if the parts of the graph do not fit together: known metric
        and granularity, a class of the logits whose metric is the stored value, consecutive
        blocks named as their hooks, node indices within `d_sae` / `n_tokens`, edge shapes."""
        def bad(message: str) -> CorruptFileError:
            return CorruptFileError(f"invalid attribution graph: {message}")

        if self.metric not in METRICS:
            raise bad(f"unknown metric {self.metric!r}; expected one of {list(METRICS)}")
        if self.granularity not in ("feature", "token"):
            raise bad(f"unknown granularity {self.granularity!r}; expected 'feature' or 'token'")
        n_classes = self.logits.shape[-1]
        if self.logits.ndim != 1 or not 0 <= self.target_class < n_classes:
            raise bad(f"target class {self.target_class} is not one of the {n_classes} classes")
        if not torch.isfinite(self.logits).all():
            raise bad("logits contain NaN/inf")
        expected_value = float(metric_values(self.logits[None].double(),
                                             torch.tensor([self.target_class]), self.metric)[0])
        eps = torch.finfo(self.logits.dtype).eps if self.logits.is_floating_point() else 0.0
        tolerance = 64 * eps * (1 + float(self.logits.abs().max()))  # rounding of a mean
        if not abs(expected_value - self.value) <= tolerance:
            raise bad(f"stored {self.metric} {self.value:.6g} of class {self.target_class} "
                      f"differs from the logits' {expected_value:.6g}")
        if not self.layers:
            raise bad("no layers")
        for k, layer in enumerate(self.layers):
            if layer.hook_name != f"blocks.{layer.block}.hook_resid_post" and \
                    layer.hook_name.startswith("blocks."):
                raise bad(f"layer {k} is {layer.hook_name!r} but says block {layer.block}")
            if k and layer.block != self.layers[k - 1].block + 1:
                raise bad(f"layers must be consecutive blocks (edges join adjacent layers); "
                          f"block {self.layers[k - 1].block} is followed by {layer.block}")
            if layer.d_sae < 1:
                raise bad(f"layer {k} has d_sae {layer.d_sae}")
            n = len(layer.features)
            for name in ("activations", "deltas", "scores"):
                if tuple(getattr(layer, name).shape) != (n,):
                    raise bad(f"layer {k} {name} have shape {list(getattr(layer, name).shape)}, "
                              f"expected [{n}]")
            if layer.features.is_floating_point() or (n and not (
                    int(layer.features.min()) >= 0 and int(layer.features.max()) < layer.d_sae)):
                raise bad(f"layer {k} feature indices must be integers in [0, {layer.d_sae})")
            if (layer.tokens is None) != (self.granularity == "feature"):
                raise bad(f"layer {k}: token indices present iff granularity is 'token'")
            if layer.tokens is not None and n and not (
                    int(layer.tokens.min()) >= 0 and int(layer.tokens.max()) < self.n_tokens):
                raise bad(f"layer {k} token indices must be in [0, {self.n_tokens})")
        if len(self.edges) != len(self.layers) - 1:
            raise CorruptFileError(f"graph has {len(self.layers)} layers but {len(self.edges)} "
                                   "edge matrices; expected one per adjacent pair")
        for k, edge in enumerate(self.edges):
            expected = (len(self.layers[k]) + 1, len(self.layers[k + 1]))
            if tuple(edge.shape) != expected:
                raise CorruptFileError(f"edge matrix {k} has shape {list(edge.shape)}, "
                                       f"expected {list(expected)}")


LOGIT_ID = "logit"


def _sparse_edges(
    tensors: Mapping[str, Tensor], k: int, shape: tuple[int, ...], json_path: Path
) -> Tensor:
    """Rebuild sparse edge matrix k from its stored COO parts, refusing out-of-range indices."""
    indices, values = tensors[f"edges.{k}.indices"], tensors[f"edges.{k}.values"]
    if len(shape) != 2 or indices.dtype != torch.long or indices.ndim != 2 or \
            indices.shape[0] != 2 or values.shape != (indices.shape[1],):
        raise CorruptFileError(f"{json_path}: sparse edge matrix {k} has indices "
                               f"{list(indices.shape)} ({indices.dtype}) and values "
                               f"{list(values.shape)}; expected [2, nnz] int64 and [nnz]")
    if indices.numel() and not ((indices.min(1).values >= 0).all()
                                and (indices.max(1).values < torch.tensor(shape)).all()):
        raise CorruptFileError(f"{json_path}: sparse edge matrix {k} has indices outside "
                               f"its shape {list(shape)}")
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()


def edge_entries(
    edge: Tensor, mask: Tensor | None = None
) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Float[Tensor, " n"]]:
    """Rows, columns and weights of the non-zero entries of a dense or sparse edge matrix, in
    row-major order; with `mask` (a boolean matrix of the same shape: sparse, with the edge
    matrix's stored entries, for a sparse one) only those where it holds."""
    if not edge.is_sparse:
        nonzero = edge != 0
        rows, cols = torch.nonzero(nonzero if mask is None else nonzero & mask, as_tuple=True)
        return rows, cols, edge[rows, cols]
    edge = edge.coalesce()
    keep = edge.values() != 0
    if mask is not None:
        mask = mask.coalesce()
        if not torch.equal(mask.indices(), edge.indices()):
            raise RRMUserError("a sparse edge matrix takes a sparse mask over its stored entries "
                               "(as prune_by_influence returns); got other indices")
        keep &= mask.values()
    rows, cols = edge.indices()
    return rows[keep], cols[keep], edge.values()[keep]


def node_id(layer: int, feature: int, token: int | None = None) -> str:
    return f"L{layer}/F{feature}" if token is None else f"L{layer}/T{token}/F{feature}"


def error_id(layer: int) -> str:
    return f"L{layer}/error"


def feature_tokens(layer: GraphLayer) -> list[tuple[int, int | None]]:
    tokens = layer.tokens.tolist() if layer.tokens is not None else [None] * len(layer)
    return list(zip(layer.features.tolist(), tokens, strict=True))


def _graph_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")


def dense_scores(graph: Graph) -> list[Float[Tensor, " slots_plus_error"]]:
    """Per layer, node scores scattered over all slots (latents, or token x latent) + error."""
    out = []
    for layer in graph.layers:
        n_slots = layer.d_sae if layer.tokens is None else graph.n_tokens * layer.d_sae
        slot = layer.features if layer.tokens is None else layer.tokens * layer.d_sae + \
            layer.features
        dense = torch.zeros(n_slots + 1)
        dense[slot] = layer.scores
        dense[-1] = layer.error_score
        out.append(dense)
    return out

