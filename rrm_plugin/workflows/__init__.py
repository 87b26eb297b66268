"""End-to-end runs that notebooks and the CLI call: trace one image, the demo, and the dataset
runs (faithfulness, lens, features, baselines, SAE evaluation) into folders and files.

Each `rrm` command is one call of a function here; its options are the fields of the function's
options dataclass, named as the command's options. Names load on first use (as in `rrm_plugin`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "trace": "trace", "TraceConfig": "trace", "TraceResult": "trace",
    "trace_to_folder": "trace_folder",
    "resolve_baselines": "baselines", "ResolvedBaselines": "baselines",
    "load_workspace": "workspace", "Workspace": "workspace",
    "DatasetInputs": "dataset_run",
    "faithfulness_to_folder": "faithfulness_folder",
    "FaithfulnessOptions": "faithfulness_folder", "FaithfulnessRun": "faithfulness_folder",
    "lens_to_folder": "lens_folder", "LensOptions": "lens_folder", "LensRun": "lens_folder",
    "features_to_folder": "features_folder", "FeaturesOptions": "features_folder",
    "FeaturesRun": "features_folder",
    "baselines_to_file": "baselines_file", "BaselinesOptions": "baselines_file",
    "BaselinesRun": "baselines_file",
    "evaluate_saes_to_file": "sae_eval_file", "SAEEvalOptions": "sae_eval_file",
    "SAEEvalRun": "sae_eval_file",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
