"""The circuits the viewer's sliders step through, computed once in Python.

The page never re-implements the pruning rules: for every slider position it reads the masks that
`rrm_plugin.circuits.pruning` returned for that threshold, so what it draws is exactly the Python
circuit. Node masks follow the viewer's node order: per layer its latent nodes then its error
node, bottom to top (the logit node, always drawn, is not in the masks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from rrm_plugin.attribution.graph import Graph
from rrm_plugin.circuits.edge_readers import layered_adjacency, layered_influence
from rrm_plugin.circuits.influence import prune_by_influence_grid
from rrm_plugin.circuits.pruning import PAPER_SWEEP, edge_rule, node_rule_on_graph
from rrm_plugin.errors import RRMUserError

# Slider grids. The defaults of `prune_by_influence` (0.8, 0.98) are grid points.
NODE_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
EDGE_THRESHOLDS: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98, 0.99, 1.0)
TAU_STEPS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
# Node budgets of the budget curve (the whole graph is added as its last point); the page's
# default budget is one of them, so its readouts are measured, not interpolated.
NODE_BUDGETS: tuple[int, ...] = (10, 20, 40, 80, 160, 320, 640)
DEFAULT_BUDGET = 40
DEFAULT_PARAMS = {"node_threshold": 0.8, "edge_threshold": 0.98}
# Which slider positions get insertion / deletion readouts (two forwards per distinct circuit):
# the budget curve's circuits and the circuit shown first, every position, or none.
Readouts = Literal["curve", "all", "none"]
READOUTS: tuple[str, ...] = get_args(Readouts)


@dataclass(frozen=True)
class CircuitStep:
    """One slider position.

    Args:
        mode: `"influence"`, `"node_rule"`, `"edge_rule"` or `"threshold_rule"`.
        params: The thresholds, e.g. `{"node_threshold": 0.8, "edge_threshold": 0.98}`.
        nodes: Kept nodes in viewer order (per layer: latents, then the error node).
        edge_masks: Kept edges, aligned with `graph.edges` (rows: sources + error).
        logit_edges: Kept edges into the logit node (top layer's latents + error).
    """

    mode: str
    params: dict[str, float]
    nodes: Bool[Tensor, " n_nodes"]
    edge_masks: list[Bool[Tensor, "src_plus_error tgt"]]
    logit_edges: Bool[Tensor, " top_plus_error"]

    @property
    def node_count(self) -> int:
        """Latent and error nodes kept (as `Circuit.node_count`)."""
        return int(self.nodes.sum())

    def edge_count(self, graph: Graph, *, nonzero: Sequence[Tensor] | None = None) -> int:
        """Kept non-zero edges, the logit edges included (as `Circuit.edges`). `nonzero`:
        `nonzero_edges(graph)`, computed once for many steps (a ViT-B graph has 3M edges)."""
        nonzero = nonzero if nonzero is not None else nonzero_edges(graph)
        return sum(int(torch.count_nonzero(m & nz)) for m, nz in
                   zip([*self.edge_masks, self.logit_edges], nonzero, strict=True))

    def layer_masks(self, graph: Graph) -> list[Bool[Tensor, " n_plus_error"]]:
        """The node mask split per layer, as the pruning functions return it."""
        return list(torch.split(self.nodes, [len(layer) + 1 for layer in graph.layers]))


def nonzero_edges(graph: Graph) -> list[Bool[Tensor, "..."]]:
    """Which edges are non-zero: per edge matrix, then the logit edges."""
    return [e != 0 for e in graph.edges] + [graph.logit_edges != 0]


def rounded(values: Tensor | Sequence[float], digits: int = 6) -> list[float]:
    """Floats to `digits` significant digits: the numbers the page's JSON carries."""
    array = np.asarray(values.detach().cpu().float() if isinstance(values, Tensor) else values,
                       dtype=np.float64)
    return [float(f"{v:.{digits}g}") for v in array.tolist()]


def node_influence(graph: Graph) -> list[float]:
    """Influence on the logit of every node in viewer order (latents + errors), as embedded."""
    return rounded(torch.cat(layered_influence(layered_adjacency(graph))))


def influence_ranking(influence: Sequence[float]) -> list[int]:
    """Nodes by influence, largest first, ties by node index (the page sorts the same way)."""
    return sorted(range(len(influence)), key=lambda i: (-influence[i], i))


def _between(graph: Graph, masks: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Edges whose two ends are kept (the paper's rules select nodes only)."""
    edges = [masks[k][:, None] & masks[k + 1][None, :-1] for k in range(len(graph.edges))]
    return edges, masks[-1].clone()


def _step(mode: str, params: dict[str, float], masks, edges, logit) -> CircuitStep:
    return CircuitStep(mode, params, torch.cat(list(masks)).bool(), [e.bool() for e in edges],
                       logit.bool())


def influence_steps(
    graph: Graph,
    *,
    node_thresholds: Sequence[float] = NODE_THRESHOLDS,
    edge_thresholds: Sequence[float] = EDGE_THRESHOLDS,
) -> list[CircuitStep]:
    """`prune_by_influence` at every (node, edge) threshold pair, node-major order."""
    grid = prune_by_influence_grid(graph, node_thresholds=node_thresholds,
                                   edge_thresholds=edge_thresholds)
    steps = []
    for node_t in node_thresholds:
        for edge_t in edge_thresholds:
            pruned = grid[(node_t, edge_t)]
            steps.append(_step("influence", {"node_threshold": node_t, "edge_threshold": edge_t},
                               pruned.node_masks, pruned.edge_masks, pruned.logit_edge_mask))
    return steps


def paper_steps(
    graph: Graph, *, sweep: Sequence[float] = PAPER_SWEEP, taus: Sequence[float] = TAU_STEPS
) -> list[CircuitStep]:
    """The paper's node and edge rules over the `p` sweep and the threshold rule over `tau`."""
    steps = []
    for p in sweep:
        masks = node_rule_on_graph(graph, p=p)
        steps.append(_step("node_rule", {"p": p}, masks, *_between(graph, masks)))
    for p in sweep:
        masks = edge_rule(graph, p=p)
        steps.append(_step("edge_rule", {"p": p}, masks, *_between(graph, masks)))
    for tau in taus:
        masks = node_rule_on_graph(graph, tau=tau)
        steps.append(_step("threshold_rule", {"tau": tau}, masks, *_between(graph, masks)))
    return steps


def budget_steps(
    graph: Graph, *, budgets: Sequence[int] = NODE_BUDGETS
) -> list[CircuitStep]:
    """The `N` most influential nodes (latents and errors, ranked on the embedded influence) for
    every budget below the graph's size and the whole graph; edges: those between kept nodes."""
    influence = node_influence(graph)
    n = len(influence)
    order = torch.tensor(influence_ranking(influence), dtype=torch.long)
    sizes = [len(layer) + 1 for layer in graph.layers]
    steps = []
    for budget in sorted({b for b in budgets if 0 < b < n} | {n}):
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order[:budget]] = True
        masks = list(torch.split(keep, sizes))
        steps.append(_step("budget", {"node_budget": budget}, masks, *_between(graph, masks)))
    return steps


def viewer_steps(graph: Graph, default_params: Mapping[str, float]) -> list[CircuitStep]:
    """Every slider position of the page: the influence grid (the thresholds shown first are
    always grid points), the paper's rules, then the budget curve's circuits."""
    return influence_steps(
        graph,
        node_thresholds=sorted({*NODE_THRESHOLDS, float(default_params["node_threshold"])}),
        edge_thresholds=sorted({*EDGE_THRESHOLDS, float(default_params["edge_threshold"])}),
    ) + paper_steps(graph) + budget_steps(graph)


def default_step(steps: Sequence[CircuitStep], default_params: Mapping[str, float]) -> int:
    """Index of the step shown first (the first with `default_params`, else 0)."""
    return next((i for i, s in enumerate(steps) if s.params == dict(default_params)), 0)


def check_readouts(readouts: str) -> None:
    if readouts not in READOUTS:
        raise RRMUserError(f"readouts must be one of {list(READOUTS)}, got {readouts!r}")


def readout_steps(
    steps: Sequence[CircuitStep], *, readouts: Readouts, default_index: int
) -> list[int]:
    """Steps whose readouts are computed: `"curve"` the budget curve's and the one shown first,
    `"all"` every step, `"none"` none."""
    check_readouts(readouts)
    if readouts == "all":
        return list(range(len(steps)))
    if readouts == "none":
        return []
    return sorted({default_index} | {i for i, s in enumerate(steps) if s.mode == "budget"})


def pack_bits(mask: Bool[Tensor, " n"]) -> bytes:
    """Little-endian bit packing (bit i of byte i // 8 is entry i), as the page unpacks it."""
    return np.packbits(mask.cpu().numpy().astype(bool), bitorder="little").tobytes()
