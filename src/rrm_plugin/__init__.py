"""rrm-plugin: residual replacement model circuits and class-embedding-space analysis for ViTs.

Importing the package registers the embedded SAE releases (e.g. `rrm-digits-vit`) with SAELens.
"""

from __future__ import annotations

from rrm_plugin.data import load_test_set
from rrm_plugin.replacement.interventions import FeatureIntervention, intervention_hooks
from rrm_plugin.replacement.splice import replacement
from rrm_plugin.saes.registry import load_saes, register_sae_release
from rrm_plugin.zoo.models import load_model
from rrm_plugin.zoo.releases import register_embedded_releases

__version__ = "0.1.0"

register_embedded_releases()


__all__ = [
    "FeatureIntervention",
    "intervention_hooks",
    "load_model",
    "load_saes",
    "load_test_set",
    "register_sae_release",
    "replacement",
]
