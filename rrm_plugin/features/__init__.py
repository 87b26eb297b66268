"""Feature interpretation at scale: dashboards of every SAE feature (and measured types)."""

from rrm_plugin.features.activations import TopActivations, collect_top_activations
from rrm_plugin.features.circuits import CircuitParticipation, circuit_participation
from rrm_plugin.features.dashboard import (
    FeatureDashboards,
    build_dashboards,
    feature_cards,
    feature_records,
    write_dashboards,
)
from rrm_plugin.features.types import FeatureTypes, LayerTypes, feature_types
from rrm_plugin.features.types_report import write_types

__all__ = [
    "CircuitParticipation",
    "FeatureDashboards",
    "FeatureTypes",
    "LayerTypes",
    "TopActivations",
    "build_dashboards",
    "circuit_participation",
    "collect_top_activations",
    "feature_cards",
    "feature_records",
    "feature_types",
    "write_dashboards",
    "write_types",
]
