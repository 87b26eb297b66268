"""Reading a faithfulness run's JSON (`rrm faithfulness --out DIR`: `DIR/faithfulness.json`, or
the shipped `docs/faithfulness/faithfulness.json.gz`) back into a `FaithfulnessResult`.

Only the per-image records are read (settings, image indices, every image's curves, node
totals, the influence-pruned circuits' means); every summary (AUCs, margins, tables) is
recomputed from them, so a file cannot carry numbers its records do not support.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from rrm_plugin.errors import CorruptFileError, RRMUserError
from rrm_plugin.io import read_json
from rrm_plugin.metrics.faithfulness import METHODS, FaithfulnessConfig
from rrm_plugin.metrics.faithfulness_result import MODES, QUANTITIES, FaithfulnessResult

_REQUIRED = ("config", "image_indices", "n_images", "node_totals", "image_curves")
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(FaithfulnessConfig)}


def load_faithfulness(path: Path) -> FaithfulnessResult:
    """The run stored in `path` (`.json` or `.json.gz`), its shapes verified.

    Raises `CorruptFileError` when a key is missing, a setting is unknown, or a curve does not
    have one row per image and one column per sweep point (or holds a non-finite value)."""
    path = Path(path)
    data = read_json(path)

    def bad(what: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: not a faithfulness run ({what})")

    if not isinstance(data, dict):
        raise bad("expected a JSON object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise bad(f"missing {missing}")
    config = _config(data["config"], bad)
    indices = data["image_indices"]
    if (not isinstance(indices, list) or not indices
            or not all(isinstance(i, int) and i >= 0 for i in indices)
            or len(set(indices)) != len(indices) or data["n_images"] != len(indices)):
        raise bad("image_indices must be distinct indices >= 0, n_images of them")
    shape = (len(indices), len(config.sweep))
    totals = data["node_totals"]
    curves = data["image_curves"]
    if not isinstance(totals, dict) or not isinstance(curves, dict):
        raise bad("node_totals and image_curves must be objects")
    if sorted(curves) != sorted(config.methods) or sorted(totals) != sorted(config.methods):
        raise bad(f"methods {sorted(curves)} / {sorted(totals)} differ from the settings' "
                  f"{list(config.methods)}")
    image_curves: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # in the settings' order
    for method in config.methods:
        total = totals[method]
        if not isinstance(total, int) or total < 1:
            raise bad(f"node_totals[{method!r}] = {total!r}")
        image_curves[method] = {}
        for mode in MODES:
            got = curves[method].get(mode) if isinstance(curves[method], dict) else None
            if not isinstance(got, dict) or sorted(got) != sorted(QUANTITIES):
                raise bad(f"image_curves[{method!r}][{mode!r}] must hold {list(QUANTITIES)}")
            image_curves[method][mode] = {q: _curve(got[q], shape, f"{method}/{mode}/{q}", bad)
                                          for q in QUANTITIES}
            counts = image_curves[method][mode]["node_count"]
            if (counts < 0).any() or (counts > total).any():
                raise bad(f"{method}/{mode} node counts outside [0, {total}]")
    influence = data.get("influence_circuit", {})
    if not isinstance(influence, dict) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in influence.values()):
        raise bad("influence_circuit must map names to finite numbers")
    return FaithfulnessResult(config=config, image_indices=list(indices),
                              image_curves=image_curves, node_totals=dict(totals),
                              influence_circuit={k: float(v) for k, v in influence.items()})


def _config(raw: Any, bad) -> FaithfulnessConfig:
    if not isinstance(raw, dict):
        raise bad("config must be an object")
    unknown = sorted(set(raw) - _CONFIG_FIELDS)
    if unknown:
        raise bad(f"unknown settings {unknown}")
    settings = dict(raw)
    for key in ("sweep", "methods", "image_indices"):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    if not set(settings.get("methods", METHODS)) <= set(METHODS):
        raise bad(f"unknown methods in {settings['methods']}")
    try:
        return FaithfulnessConfig(**settings)
    except (RRMUserError, TypeError) as err:
        raise bad(f"invalid settings: {err}") from err


def _curve(raw: Any, shape: tuple[int, int], name: str, bad) -> np.ndarray:
    try:
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise bad(f"{name} is not a table of numbers") from err
    if array.shape != shape:
        raise bad(f"{name} has shape {array.shape}, expected {shape} (images, sweep points)")
    if not np.isfinite(array).all():
        raise bad(f"{name} holds non-finite values")
    return array
