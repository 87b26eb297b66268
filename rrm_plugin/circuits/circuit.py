"""Circuits: selected nodes (and edges) of an attribution graph, runnable as interventions.

Insertion keeps the circuit's latents and sets every other latent to its per-position baseline;
the layer's error keeps its true (clean-run) value only if the error node is selected, else it is
set to its baseline. Deletion sets the circuit's latents (and selected errors) to baseline. Both run
through the replacement hook mode: host hooks on `<hook>.hook_sae_acts_post` and
`<hook>.hook_sae_error`. Latents are recomputed from the intervened stream, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines, require_baselines
from rrm_plugin.attribution.graph import Graph, edge_entries, error_id, node_id
from rrm_plugin.errors import RRMUserError, UnknownNameError
from rrm_plugin.replacement.splice import splice_saes

Mode = Literal["insertion", "deletion"]


@dataclass
class Circuit:
    """Selected latents and error nodes per SAE layer, plus the kept edges.

    Args:
        hook_names: SAE hook points, bottom to top.
        latents: Per layer, `[d_sae]` (latent nodes) or `[pos, d_sae]` (token nodes) masks.
        errors: `[layers]` mask of selected error nodes.
        edges: Kept edges as `(source_id, target_id, weight)` (ids as in `Graph.to_json_dict`).
    """

    hook_names: list[str]
    latents: list[Bool[Tensor, "..."]]
    errors: Bool[Tensor, " layers"]
    edges: list[tuple[str, str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.latents) != len(self.hook_names) or len(self.errors) != len(self.hook_names):
            raise RRMUserError(f"circuit has {len(self.hook_names)} layers but {len(self.latents)} "
                               f"latent masks and {len(self.errors)} error flags")

    @property
    def node_count(self) -> int:
        return int(sum(int(m.sum()) for m in self.latents) + int(self.errors.sum()))

    def layer_features(self, k: int) -> list[int]:
        mask = self.latents[k]
        return torch.nonzero(mask.any(0) if mask.ndim == 2 else mask)[:, 0].tolist()

    @classmethod
    def from_graph(
        cls,
        graph: Graph,
        node_masks: Sequence[Bool[Tensor, " n_plus_error"]],
        *,
        edge_masks: Sequence[Tensor] | None = None,
        logit_edge_mask: Tensor | None = None,
        list_edges: bool = True,
    ) -> Circuit:
        """The circuit of the graph nodes selected by `node_masks` (error node last).

        `list_edges=False` leaves `edges` empty: running a circuit needs only its nodes, and a
        ViT-B graph's kept edges can run to millions of Python tuples.
        """
        if len(node_masks) != len(graph.layers):
            raise RRMUserError(f"got {len(node_masks)} node masks for {len(graph.layers)} layers")
        latents, errors = [], []
        for layer, mask in zip(graph.layers, node_masks, strict=True):
            if len(mask) != len(layer) + 1:
                raise RRMUserError(f"node mask for {layer.hook_name} has {len(mask)} entries, "
                                   f"expected {len(layer) + 1} (nodes + error)")
            chosen = mask[:-1]
            if layer.tokens is None:
                dense = torch.zeros(layer.d_sae, dtype=torch.bool)
                dense[layer.features[chosen]] = True
            else:
                dense = torch.zeros(graph.n_tokens, layer.d_sae, dtype=torch.bool)
                dense[layer.tokens[chosen], layer.features[chosen]] = True
            latents.append(dense)
            errors.append(bool(mask[-1]))
        edges = _kept_edges(graph, node_masks, edge_masks, logit_edge_mask) if list_edges else []
        return cls([layer.hook_name for layer in graph.layers], latents,
                   torch.tensor(errors, dtype=torch.bool), edges)

    def to_json_dict(self) -> dict[str, Any]:
        layers = []
        for k, hook in enumerate(self.hook_names):
            mask = self.latents[k]
            entry: dict[str, Any] = {"hook_name": hook, "error": bool(self.errors[k])}
            if mask.ndim == 2:
                entry["nodes"] = [[t, f] for t, f in torch.nonzero(mask).tolist()]
            else:
                entry["features"] = torch.nonzero(mask)[:, 0].tolist()
            layers.append(entry)
        return {"node_count": self.node_count, "layers": layers,
                "edges": [{"source": s, "target": t, "weight": w} for s, t, w in self.edges]}


def _kept_edges(graph, node_masks, edge_masks, logit_edge_mask) -> list[tuple[str, str, float]]:
    ids = []
    for k, layer in enumerate(graph.layers):
        tokens = layer.tokens.tolist() if layer.tokens is not None else [None] * len(layer)
        ids.append([node_id(k, f, t) for f, t in zip(layer.features.tolist(), tokens, strict=True)]
                   + [error_id(k)])
    kept = []
    for k, edge in enumerate(graph.edges):
        rows, cols, weights = edge_entries(edge, None if edge_masks is None else edge_masks[k])
        keep = node_masks[k][rows] & node_masks[k + 1][cols]
        kept += [(ids[k][i], ids[k + 1][o], w) for i, o, w in
                 zip(rows[keep].tolist(), cols[keep].tolist(), weights[keep].tolist(),
                     strict=True)]
    top = len(graph.layers) - 1
    logit_mask = node_masks[top] if logit_edge_mask is None else node_masks[top] & logit_edge_mask
    logit_edges = graph.logit_edges
    kept += [(ids[top][i], "logit", float(logit_edges[i]))
             for i in torch.nonzero(logit_mask & (logit_edges != 0))[:, 0].tolist()]
    return kept


def stack_masks(
    circuits: Sequence[Circuit], n_tokens: int
) -> tuple[list[Bool[Tensor, "batch pos d_sae"]], Bool[Tensor, "batch layers"]]:
    """Per-layer `[batch, pos, d_sae]` latent masks and `[batch, layers]` error masks."""
    n_layers = len(circuits[0].hook_names)
    latents = []
    for k in range(n_layers):
        masks = [c.latents[k] for c in circuits]
        latents.append(torch.stack([m.expand(n_tokens, m.shape[-1]) if m.ndim == 1 else m
                                    for m in masks]))
    return latents, torch.stack([c.errors for c in circuits])


@torch.no_grad()
def clean_errors(
    model: nn.Module, saes: Mapping[str, SAE], images: Tensor
) -> dict[str, Float[Tensor, "batch pos d_model"]]:
    """SAE errors of the clean spliced run (the errors' "true values")."""
    names = {f"{h}.hook_sae_error" for h in saes}
    with splice_saes(model, saes, keep_error=True):
        _, cache = model.run_with_cache(images, names_filter=lambda n: n in names)
    return {h: cache[f"{h}.hook_sae_error"] for h in saes}


def intervention_hooks(
    hook_names: Sequence[str],
    latent_masks: Sequence[Bool[Tensor, "batch pos d_sae"]],
    error_masks: Bool[Tensor, "batch layers"],
    *,
    baselines: Baselines,
    errors: Mapping[str, Tensor],
    mode: Mode,
) -> list[tuple[str, Callable]]:
    """Host hooks that keep (insertion) or ablate (deletion) the masked nodes."""
    if mode not in ("insertion", "deletion"):
        raise RRMUserError(f"unknown mode {mode!r}; expected 'insertion' or 'deletion'")
    hooks = []
    for k, h in enumerate(hook_names):
        keep = latent_masks[k] if mode == "insertion" else ~latent_masks[k]
        keep_error = error_masks[:, k] if mode == "insertion" else ~error_masks[:, k]
        base_z, base_e, true_e = baselines.features[h], baselines.errors[h], errors[h]

        def acts_hook(z: Tensor, hook, keep=keep, base=base_z) -> Tensor:
            return torch.where(keep.to(z.device), z, base.to(z.device))

        def error_hook(e: Tensor, hook, keep=keep_error, base=base_e, true=true_e) -> Tensor:
            return torch.where(keep.to(e.device)[:, None, None], true.to(e.device),
                               base.to(e.device))

        hooks += [(f"{h}.hook_sae_acts_post", acts_hook), (f"{h}.hook_sae_error", error_hook)]
    return hooks


def check_circuits(saes: Mapping[str, SAE], circuits: Sequence[Circuit]) -> dict[str, SAE]:
    """The SAEs of the circuits' layers (bottom to top), after checking that every circuit
    fits them."""
    hook_names = circuits[0].hook_names
    missing = [h for h in hook_names if h not in saes]
    if missing:
        raise UnknownNameError(
            f"circuit uses hook(s) {missing} that have no SAE; SAEs: {list(saes)}")
    for circuit in circuits:
        if circuit.hook_names != hook_names:
            raise RRMUserError(f"circuits over different layers: {circuit.hook_names} and "
                               f"{hook_names}")
        for hook, mask in zip(circuit.hook_names, circuit.latents, strict=True):
            if mask.shape[-1] != saes[hook].cfg.d_sae:
                raise RRMUserError(f"circuit layer {hook!r} has {mask.shape[-1]} latents, the SAE "
                                   f"there has {saes[hook].cfg.d_sae}; the circuit was built for "
                                   "other SAEs")
    return {h: saes[h] for h in hook_names}


@torch.no_grad()
def run_circuits(
    model: nn.Module,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "batch c h w"],
    circuits: Sequence[Circuit] | Circuit,
    *,
    baselines: Baselines,
    mode: Mode = "insertion",
    errors: Mapping[str, Tensor] | None = None,
) -> Float[Tensor, "batch classes"]:
    """Logits with each image's circuit kept (insertion) or ablated (deletion).

    Args:
        circuits: One circuit per image, or one for all.
        errors: Clean-run SAE errors of `images` (computed when omitted).
    """
    if isinstance(circuits, Circuit):
        circuits = [circuits] * len(images)
    if len(circuits) != len(images):
        raise RRMUserError(f"got {len(circuits)} circuits for {len(images)} images")
    used = check_circuits(saes, circuits)
    require_baselines(baselines, caller="run_circuits")
    baselines.check(used)
    if errors is None:
        errors = clean_errors(model, used, images)
    n_tokens = next(iter(errors.values())).shape[1]
    latent_masks, error_masks = stack_masks(circuits, n_tokens)
    hooks = intervention_hooks(list(used), latent_masks, error_masks, baselines=baselines,
                               errors=errors, mode=mode)
    # The error hooks replace every error, so the splice need not compute the clean one.
    with splice_saes(model, used, keep_error=True, fixed_errors=errors):
        return model.run_with_hooks(images, fwd_hooks=hooks)
