"""Circuit selection (docs/method.md §4): the paper's rules and circuit-tracer's global pruning.

Per-layer rules work on score vectors with one slot per latent (or token x latent) plus the
layer's error node as the last slot, batched over any leading axes:

- `node_rule`: keep the top `floor(p * n_max)` slots of each layer (`n_max`: largest layer size);
  the authors' `topn` criterion.
- `topk_rule`: keep the top `floor(k * n_l)` slots of each layer (`n_l`: that layer's own size,
  error included); the authors' `topk` criterion.
- `threshold_rule`: keep slots until the cumulative normalised score reaches `tau`.
- `edge_rule`: top layer by its node scores; each lower layer by its summed, renormalised
  out-edges into the nodes already selected above (any of the three criteria).

Normalisation clamps scores at zero (or takes |.|) and divides by the layer's sum, error included.
Ranking is by normalised score. Clamping makes every non-positive slot a tie at zero (at p = 0.5
about half of what the node rule keeps), and the authors' `torch.argsort` leaves their order
undefined. `ties` fixes it: `"raw"` (default) by raw score (zero before negative), then index;
`"index"` by slot index; `"random"` in a random order drawn from `generator`.
circuit-tracer's global influence pruning is `rrm_plugin.circuits.influence`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rrm_plugin.attribution.graph import Graph, dense_scores
from rrm_plugin.errors import RRMUserError

Normalisation = Literal["clamp", "abs"]
Ties = Literal["raw", "index", "random"]
TIES: tuple[str, ...] = ("raw", "index", "random")
Criterion = Literal["topn", "topk", "threshold"]
# The authors' names (`--graph_criterion`): topn = node_rule, topk = topk_rule, threshold.
CRITERIA: tuple[str, ...] = ("topn", "topk", "threshold")
# The paper's circuit sizes (fraction of the largest layer, per layer); also the topk fractions.
PAPER_SWEEP: tuple[float, ...] = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# The authors' threshold sweep (`threshold_list` of their model_faithfulness.py).
THRESHOLD_SWEEP: tuple[float, ...] = (
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 0.9999, 1.0
)


def _positive(scores: Tensor, mode: str) -> Tensor:
    if mode == "clamp":
        return scores.clamp(min=0)
    if mode == "abs":
        return scores.abs()
    raise RRMUserError(f"unknown normalisation {mode!r}; expected 'clamp' or 'abs'")


def normalise(scores: Float[Tensor, "... n"], mode: Normalisation = "clamp") -> Tensor:
    """Clamp (or |.|) and divide by the layer total; an all-zero layer stays zero."""
    positive = _positive(scores, mode)
    total = positive.sum(-1, keepdim=True)
    return torch.where(total > 0, positive / total.clamp(min=torch.finfo(scores.dtype).tiny), 0.0)


def _tie_order(scores: Tensor, ties: str, generator: torch.Generator | None) -> Tensor:
    """The order among equal normalised scores (a stable sort by score keeps it)."""
    if ties == "raw":
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices
    if ties == "index":
        return torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
    if ties == "random":
        noise = torch.rand(scores.shape, generator=generator, dtype=torch.float64)
        return torch.argsort(noise, dim=-1).to(scores.device)
    raise RRMUserError(f"unknown ties {ties!r}; expected one of {list(TIES)}")


def _ranks(scores: Tensor, mode: str, ties: str = "raw",
           generator: torch.Generator | None = None) -> Tensor:
    """Rank of each slot (0 = best): by normalised score, ties ordered by `ties`."""
    first = _tie_order(scores, ties, generator)
    key = _positive(scores, mode).gather(-1, first)
    order = first.gather(-1, torch.sort(key, dim=-1, descending=True, stable=True).indices)
    return torch.empty_like(order).scatter_(-1, order, torch.arange(
        order.shape[-1], device=order.device).expand_as(order).contiguous())


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise RRMUserError(f"{name} must be in [0, 1], got {value}")


def node_rule(
    scores: Sequence[Float[Tensor, "... n"]],
    *,
    p: float,
    n_max: int | None = None,
    mode: Normalisation = "clamp",
    ties: Ties = "raw",
    generator: torch.Generator | None = None,
) -> list[Bool[Tensor, "... n"]]:
    """Keep the top `floor(p * n_max)` slots of every layer (error slot included)."""
    check_fraction("p", p)
    n_max = n_max if n_max is not None else max(s.shape[-1] for s in scores)
    count = math.floor(p * n_max)
    return [_ranks(s, mode, ties, generator) < count for s in scores]


def topk_rule(
    scores: Sequence[Float[Tensor, "... n"]],
    *,
    k: float,
    mode: Normalisation = "clamp",
    ties: Ties = "raw",
    generator: torch.Generator | None = None,
) -> list[Bool[Tensor, "... n"]]:
    """Keep the top `floor(k * n)` slots of every layer, `n` its own size (error included)."""
    check_fraction("k", k)
    # floor of the float product, as the authors' int(topk * size).
    return [_ranks(s, mode, ties, generator) < math.floor(k * s.shape[-1]) for s in scores]


def _threshold_counts(normalised_sorted: Tensor, tau: float) -> Tensor:
    # Add slots while the running total is below tau (as the authors' loop does).
    if tau <= 0:
        return torch.zeros(normalised_sorted.shape[:-1], dtype=torch.long,
                           device=normalised_sorted.device)
    below = (normalised_sorted.cumsum(-1) < tau).sum(-1)
    return (below + 1).clamp(max=normalised_sorted.shape[-1])


def threshold_rule(
    scores: Sequence[Float[Tensor, "... n"]],
    *,
    tau: float,
    mode: Normalisation = "clamp",
    ties: Ties = "raw",
    generator: torch.Generator | None = None,
) -> list[Bool[Tensor, "... n"]]:
    """Keep each layer's best slots until their normalised scores add up to `tau`."""
    check_fraction("tau", tau)
    masks = []
    for s in scores:
        ranks = _ranks(s, mode, ties, generator)
        ordered = normalise(s, mode).gather(-1, torch.argsort(ranks, dim=-1))
        masks.append(ranks < _threshold_counts(ordered, tau)[..., None])
    return masks


def select(
    scores: Sequence[Float[Tensor, "... n"]],
    *,
    criterion: Criterion,
    value: float,
    n_max: int | None = None,
    mode: Normalisation = "clamp",
    ties: Ties = "raw",
    generator: torch.Generator | None = None,
) -> list[Bool[Tensor, "... n"]]:
    """One of the authors' criteria at sweep value `value` (p, k or tau)."""
    if criterion == "topn":
        return node_rule(scores, p=value, n_max=n_max, mode=mode, ties=ties, generator=generator)
    if criterion == "topk":
        return topk_rule(scores, k=value, mode=mode, ties=ties, generator=generator)
    if criterion == "threshold":
        return threshold_rule(scores, tau=value, mode=mode, ties=ties, generator=generator)
    raise RRMUserError(f"unknown criterion {criterion!r}; expected one of {list(CRITERIA)}")


def _select(values: Tensor, *, p: float | None, tau: float | None, k: float | None, n_max: int,
            mode: str, ties: str, generator: torch.Generator | None) -> Tensor:
    given = [(c, v) for c, v in (("topn", p), ("threshold", tau), ("topk", k)) if v is not None]
    if len(given) != 1:
        raise RRMUserError("give exactly one of p= (node count rule), k= (fraction of each layer) "
                           "or tau= (threshold rule)")
    (criterion, value), = given
    return select([values], criterion=criterion, value=value, n_max=n_max, mode=mode, ties=ties,
                  generator=generator)[0]


def graph_n_max(graph: Graph) -> int:
    """Largest layer size (slots + error), as the authors' `max_node_num`."""
    per_token = graph.n_tokens if graph.granularity == "token" else 1
    return max(layer.d_sae * per_token + 1 for layer in graph.layers)


def graph_node_scores(graph: Graph) -> list[Float[Tensor, " n_plus_error"]]:
    """Per layer, the graph's node scores with the error score appended."""
    return [torch.cat([layer.scores, torch.tensor([layer.error_score])]) for layer in graph.layers]


def node_rule_on_graph(
    graph: Graph, *, p: float | None = None, tau: float | None = None, k: float | None = None,
    mode: Normalisation = "clamp", ties: Ties = "raw", generator: torch.Generator | None = None,
) -> list[Bool[Tensor, " n_plus_error"]]:
    """Node (p), topk (k) or threshold (tau) rule on a graph's nodes: masks over nodes + error."""
    return [_select(s, p=p, tau=tau, k=k, n_max=graph_n_max(graph), mode=mode, ties=ties,
                    generator=generator)
            for s in graph_node_scores(graph)]


def edge_rule(
    graph: Graph, *, p: float | None = None, tau: float | None = None, k: float | None = None,
    mode: Normalisation = "clamp", dense: bool = False, ties: Ties = "raw",
    generator: torch.Generator | None = None,
) -> list[Bool[Tensor, " n_plus_error"]]:
    """The paper's edge rule; masks over each layer's nodes + error (last).

    Exactly one criterion: `p` (topn, fraction of the largest layer), `k` (topk, fraction of
    each layer's own size) or `tau` (threshold). With `dense=True` the masks cover every slot
    (all latents, as the authors rank them, so large `p` also reaches latents outside the
    graph); otherwise only the graph's nodes.
    """
    graph.require_dense_edges("edge_rule")
    n_max = graph_n_max(graph)
    scores = dense_scores(graph) if dense else graph_node_scores(graph)
    all_edges = dense_edges(graph) if dense else graph.edges
    masks: list[Tensor] = [torch.zeros(0)] * len(graph.layers)
    top = len(graph.layers) - 1
    pick = dict(p=p, tau=tau, k=k, n_max=n_max, mode=mode, ties=ties, generator=generator)
    masks[top] = _select(scores[top], **pick)
    for layer in range(top - 1, -1, -1):
        chosen = masks[layer + 1][:-1]  # the error above has no incoming edges
        edges = all_edges[layer][:, chosen]
        edges = edges.abs() if mode == "abs" else edges
        # Summed out-edge weight; the rules renormalise it over the layer (error row included).
        masks[layer] = _select(edges.sum(-1), **pick)
    return masks


def _slots(graph: Graph, k: int) -> tuple[Tensor, int]:
    layer = graph.layers[k]
    if layer.tokens is None:
        return layer.features, layer.d_sae
    return layer.tokens * layer.d_sae + layer.features, graph.n_tokens * layer.d_sae


def dense_edges(graph: Graph) -> list[Float[Tensor, "slots_plus_error slots"]]:
    """Edges scattered over all slots of both layers (error row last)."""
    graph.require_dense_edges("dense_edges")
    out = []
    for k, edge in enumerate(graph.edges):
        (src, n_src), (tgt, n_tgt) = _slots(graph, k), _slots(graph, k + 1)
        rows = torch.cat([src, torch.tensor([n_src])])
        dense = torch.zeros(n_src + 1, n_tgt)
        dense[rows[:, None], tgt[None, :]] = edge
        out.append(dense)
    return out
