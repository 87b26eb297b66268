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


def list_models(*, show: bool = True) -> list[dict[str, str]]:
    """Every model `load_model` knows (name, source, preprocessing); prints a table."""
    from rrm_plugin.zoo.models import format_model_table
    from rrm_plugin.zoo.models import list_models as rows_of_models

    rows = rows_of_models()
    if show:
        print(format_model_table(rows))
    return rows


def list_releases(*, show: bool = True) -> list[dict]:
    """Every SAE release (release, model, hooks, d_sae, k, source); prints a table."""
    from rrm_plugin.zoo.releases import format_release_table
    from rrm_plugin.zoo.releases import list_releases as rows_of_releases

    rows = rows_of_releases()
    if show:
        print(format_release_table(rows))
    return rows


__all__ = [
    "FeatureIntervention",
    "intervention_hooks",
    "list_models",
    "list_releases",
    "load_model",
    "load_saes",
    "load_test_set",
    "register_sae_release",
    "replacement",
]
