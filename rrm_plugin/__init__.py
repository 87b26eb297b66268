"""rrm-plugin: residual replacement model circuits and class-embedding-space analysis for ViTs.

Importing the package is cheap: the public functions load on first use, and the embedded SAE
releases (e.g. `rrm-digits-vit`) are registered with SAELens as soon as SAELens is imported,
before or after this package (`SAE.from_pretrained("rrm-digits-vit", ...)` works either way).
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.abc import MetaPathFinder
from importlib.machinery import PathFinder

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
    "register_sae_release": "rrm_plugin.saes.registry",
    "load_model": "rrm_plugin.zoo.models",
    "load_test_set": "rrm_plugin.zoo.datasets",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rrm_plugin' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`rrm_plugin.replacement` is the context manager, as when it was imported eagerly, even
    after the `rrm_plugin.replacement` subpackage loads (the import system then sets the
    package attribute to the subpackage; the subpackage stays reachable through sys.modules)."""

    @property
    def replacement(self):
        from rrm_plugin.replacement.splice import replacement

        return replacement

    @replacement.setter
    def replacement(self, value) -> None:
        pass


sys.modules[__name__].__class__ = _Package


# Modules that registration imports and that import sae_lens themselves. If one of them is what
# first imports sae_lens, it is still initialising when the hook below fires; registration then
# waits and that module finishes it at its end (`registration_pending`).
_REGISTRATION_MODULES = ("rrm_plugin.zoo.releases", "rrm_plugin.saes.registry")
_pending = [False]


def _initialising(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(module.__spec__, "_initializing", False))


def registration_pending() -> bool:
    """True if SAELens was imported while a registration module was initialising."""
    return _pending[0]


def _register_releases() -> None:
    if any(_initialising(name) for name in _REGISTRATION_MODULES):
        _pending[0] = True
        return
    from rrm_plugin.zoo.releases import ensure_registered

    ensure_registered()


class _RegisterAfterSAELens(MetaPathFinder):
    """Runs `_register_releases` right after the `sae_lens` package finishes importing."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "sae_lens":
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            _register_releases()

        spec.loader.exec_module = exec_module
        return spec


if "sae_lens" in sys.modules:
    _register_releases()
elif not any(isinstance(f, _RegisterAfterSAELens) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterSAELens())


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
    "Circuit",
    "FeatureIntervention",
    "Graph",
    "attribute",
    "compute_baselines",
    "evaluate_faithfulness",
    "intervention_hooks",
    "list_models",
    "list_releases",
    "load_model",
    "load_saes",
    "load_test_set",
    "prune_by_influence",
    "register_sae_release",
    "replacement",
    "run_lens",
]
