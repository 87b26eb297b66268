"""Circuits of the residual replacement model: selection rules, running, figures."""

from rrm_plugin.circuits.circuit import Circuit, clean_errors, run_circuits
from rrm_plugin.circuits.influence import PruneResult, graph_scores, prune_by_influence
from rrm_plugin.circuits.pruning import (
    PAPER_SWEEP,
    edge_rule,
    node_rule,
    node_rule_on_graph,
    threshold_rule,
)

__all__ = [
    "PAPER_SWEEP",
    "Circuit",
    "PruneResult",
    "clean_errors",
    "edge_rule",
    "graph_scores",
    "node_rule",
    "node_rule_on_graph",
    "prune_by_influence",
    "run_circuits",
    "threshold_rule",
]
