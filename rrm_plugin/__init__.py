"""rrm-plugin: residual replacement model circuits and class-embedding-space analysis for ViTs.

Importing the package is cheap (the `rrm` command starts with it): the public functions load on
first use, through the `_LAZY` table below, and importing changes nothing outside this package.

SAE releases by name: `rrm_plugin.register_releases()` adds this package's SAE releases (the
shipped `rrm-digits-vit`, the hub releases in `rrm_plugin.list_releases()`) to SAELens's
pretrained-SAE directory, after which `SAE.from_pretrained("rrm-digits-vit", sae_id)` finds them.
It is one explicit call because registering imports SAELens (seconds), which `import rrm_plugin`
must not do. The package's own loaders (`load_saes`, every `rrm` command) call it themselves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rrm_plugin.tables import Table

__version__ = "0.1.0"

# Public name -> module that defines it; imported on first access (PEP 562).
_LAZY = {
    "attribute": "rrm_plugin.attribution.build",
    "Graph": "rrm_plugin.attribution.graph",
    "compute_baselines": "rrm_plugin.attribution.baselines",
    "Circuit": "rrm_plugin.circuits.circuit",
    "prune_by_influence": "rrm_plugin.circuits.influence",
    "evaluate_faithfulness": "rrm_plugin.metrics.faithfulness",
    "run_lens": "rrm_plugin.lens.report",
    "FeatureIntervention": "rrm_plugin.replacement.interventions",
    "intervention_hooks": "rrm_plugin.replacement.interventions",
    "load_saes": "rrm_plugin.zoo.releases",
    "register_releases": "rrm_plugin.zoo.releases",
    "register_sae_release": "rrm_plugin.saes.registry",
    "splice_saes": "rrm_plugin.replacement.splice",
    "load_model": "rrm_plugin.zoo.models",
    "load_test_set": "rrm_plugin.zoo.datasets",
    "load_images": "rrm_plugin.zoo.inputs",
    "Preprocessing": "rrm_plugin.data.preprocessing",
    "Baselines": "rrm_plugin.attribution.baselines",
    "resolve_baselines": "rrm_plugin.workflows.baselines",
    "ResolvedBaselines": "rrm_plugin.workflows.baselines",
    "trace": "rrm_plugin.workflows.trace",
    "TraceConfig": "rrm_plugin.workflows.trace",
    "TraceResult": "rrm_plugin.workflows.trace",
    "faithfulness_to_folder": "rrm_plugin.workflows.faithfulness_folder",
    "FaithfulnessOptions": "rrm_plugin.workflows.faithfulness_folder",
    "lens_to_folder": "rrm_plugin.workflows.lens_folder",
    "LensOptions": "rrm_plugin.workflows.lens_folder",
    "features_to_folder": "rrm_plugin.workflows.features_folder",
    "FeaturesOptions": "rrm_plugin.workflows.features_folder",
    "baselines_to_file": "rrm_plugin.workflows.baselines_file",
    "BaselinesOptions": "rrm_plugin.workflows.baselines_file",
    "evaluate_saes_to_file": "rrm_plugin.workflows.sae_eval_file",
    "SAEEvalOptions": "rrm_plugin.workflows.sae_eval_file",
    "trace_to_folder": "rrm_plugin.workflows.trace_folder",
    "RRMUserError": "rrm_plugin.errors",
    "show": "rrm_plugin.viewer.notebook",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rrm_plugin' has no attribute {name!r}")


def list_models() -> Table:
    """Every model `load_model` knows: a list of rows (model, source, preprocessing,
    description) that shows itself as a table (markdown `repr`, HTML in a notebook)."""
    from rrm_plugin.zoo.models import list_models as rows_of_models
    from rrm_plugin.zoo.models import model_table

    return model_table(rows_of_models())


def list_releases() -> Table:
    """Every SAE release: rows (release, model, hooks, d_sae, k, source) shown as a table."""
    from rrm_plugin.zoo.releases import list_releases as rows_of_releases
    from rrm_plugin.zoo.releases import release_table

    return release_table(rows_of_releases())


__all__ = [
    "Baselines",
    "BaselinesOptions",
    "Circuit",
    "FaithfulnessOptions",
    "FeatureIntervention",
    "FeaturesOptions",
    "Graph",
    "LensOptions",
    "Preprocessing",
    "RRMUserError",
    "ResolvedBaselines",
    "SAEEvalOptions",
    "TraceConfig",
    "TraceResult",
    "attribute",
    "baselines_to_file",
    "compute_baselines",
    "evaluate_faithfulness",
    "evaluate_saes_to_file",
    "faithfulness_to_folder",
    "features_to_folder",
    "intervention_hooks",
    "lens_to_folder",
    "list_models",
    "list_releases",
    "load_images",
    "load_model",
    "load_saes",
    "load_test_set",
    "prune_by_influence",
    "register_releases",
    "register_sae_release",
    "resolve_baselines",
    "run_lens",
    "show",
    "splice_saes",
    "trace",
    "trace_to_folder",
]
