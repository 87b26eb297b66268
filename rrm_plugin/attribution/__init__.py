"""Attribution graphs of the residual replacement model: linearisation, baselines, engine."""

from rrm_plugin.attribution.baselines import (
    Baselines,
    compute_baselines,
)
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig
from rrm_plugin.attribution.forward import attribution_forward
from rrm_plugin.attribution.graph import Graph, GraphLayer, dense_scores
from rrm_plugin.attribution.linearise import (
    FULL,
    NONE,
    Linearisation,
    capture_constants,
    frozen,
    linearised,
)

__all__ = [
    "FULL",
    "NONE",
    "Baselines",
    "EngineConfig",
    "Graph",
    "GraphLayer",
    "Linearisation",
    "attribute",
    "attribution_forward",
    "capture_constants",
    "compute_baselines",
    "dense_scores",
    "frozen",
    "linearised",
]
