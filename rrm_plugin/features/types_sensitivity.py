"""How the type shares move with each hand-set threshold, from the measured statistics.

The rule (`features/types_rule.py`) has four hand-set thresholds: the minimum excess eta squared
(0.3), the margin over the second group (1.5x), the dead fraction (1%) and the random-latent
quantile that sets each group's floor (99%). `sensitivity` re-types every feature, and every
random latent, with one threshold moved over `GRID` at a time and the others at their defaults,
from the per-feature group scores and fire fractions already measured: the model is not run
again. A conclusion that holds over every row is robust to that threshold; one that flips is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from rrm_plugin.errors import RRMUserError
from rrm_plugin.features.types import FeatureTypes
from rrm_plugin.features.types_rule import (
    DEAD_FRACTION,
    GROUPS,
    MARGIN,
    MIN_EXCESS,
    RANDOM_QUANTILE,
    TYPES,
    random_floor,
    shares,
    type_labels,
)
from rrm_plugin.io import _atomic, write_json
from rrm_plugin.plotting import new_figure, save_figure

DEFAULTS = {"min_excess": MIN_EXCESS, "margin": MARGIN, "dead_fraction": DEAD_FRACTION,
            "random_quantile": RANDOM_QUANTILE}
GRID: dict[str, tuple[float, ...]] = {
    "min_excess": (0.2, 0.25, 0.3, 0.35, 0.4),
    "margin": (1.25, 1.5, 1.75, 2.0),
    "dead_fraction": (0.005, 0.01, 0.015, 0.02),
    "random_quantile": (0.95, 0.975, 0.99, 0.995),
}
LABELS = {"min_excess": "minimum excess eta squared", "margin": "margin over the second group",
          "dead_fraction": "dead below this fire fraction",
          "random_quantile": "random-latent floor quantile"}


def layer_sensitivity(
    scores: Tensor, fire_fraction: Tensor, random_scores: Tensor, random_fire_fraction: Tensor,
    *, grid: dict[str, tuple[float, ...]] = GRID,
) -> list[dict[str, Any]]:
    """One row per (threshold, value): the features' type shares and the share of random latents
    typed (the rule's false-positive rate), the other thresholds at `DEFAULTS`."""
    unknown = set(grid) - set(DEFAULTS)
    if unknown:
        raise RRMUserError(f"unknown thresholds {sorted(unknown)}; expected some of "
                         f"{sorted(DEFAULTS)}")
    rows = []
    for name, values in grid.items():
        for value in values:
            t = {**DEFAULTS, name: float(value)}
            floor = random_floor(random_scores, random_fire_fraction,
                                 quantile=t["random_quantile"], dead_fraction=t["dead_fraction"])
            rule = {"min_excess": t["min_excess"], "margin": t["margin"],
                    "dead_fraction": t["dead_fraction"]}
            random_shares = shares(type_labels(random_scores, random_fire_fraction, floor, **rule))
            rows.append({
                "threshold": name, "value": float(value), "default": value == DEFAULTS[name],
                "shares": shares(type_labels(scores, fire_fraction, floor, **rule)),
                "random_typed": sum(random_shares[g] for g in GROUPS),
                "floor": [round(float(f), 5) for f in floor],
            })
    return rows


def sensitivity(result: FeatureTypes) -> dict[str, Any]:
    """`rrm-feature-types-sensitivity/1` records of every layer of a measured result."""
    return {
        "format": "rrm-feature-types-sensitivity/1", "defaults": DEFAULTS,
        "grid": {k: list(v) for k, v in GRID.items()}, "groups": list(GROUPS),
        "layers": [{"hook_name": hook, "rows": layer_sensitivity(
            lt.group_scores, lt.fire_fraction, lt.random_scores, lt.random_fire_fraction)}
            for hook, lt in result.layers.items()],
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def sensitivity_table(records: dict[str, Any]) -> str:
    """Markdown: one table per threshold (shares in %), then each share's range over all rows."""
    layers = records["layers"]
    out = []
    for name in records["grid"]:
        out += [f"**{LABELS.get(name, name)}** (`{name}`, default {records['defaults'][name]})",
                "", "| value | layer | " + " | ".join(TYPES) + " | random latents typed |",
                "|---" * (len(TYPES) + 3) + "|"]
        for k, layer in enumerate(layers):
            for row in layer["rows"]:
                if row["threshold"] != name:
                    continue
                value = f"**{row['value']:g}**" if row["default"] else f"{row['value']:g}"
                out.append(f"| {value} | {k} | " + " | ".join(_pct(row["shares"][t]) for t in TYPES)
                           + f" | {_pct(row['random_typed'])} |")
        out.append("")
    out += ["**Range over every row above** (default, then min-max, %)", "",
            "| layer | " + " | ".join(TYPES) + " | random latents typed |",
            "|---" * (len(TYPES) + 2) + "|"]
    for k, layer in enumerate(layers):
        rows = layer["rows"]
        default = next(r for r in rows if r["default"])
        cells = []
        for t in TYPES:
            v = [r["shares"][t] for r in rows]
            cells.append(f"{_pct(default['shares'][t])} ({_pct(min(v))}-{_pct(max(v))})")
        v = [r["random_typed"] for r in rows]
        cells.append(f"{_pct(default['random_typed'])} ({_pct(min(v))}-{_pct(max(v))})")
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_sensitivity(result: FeatureTypes, out_dir: Path) -> list[Path]:
    """types_sensitivity.json, .md and .png."""
    out = Path(out_dir)
    records = sensitivity(result)
    written = [write_json(out / "types_sensitivity.json", records)]
    table = sensitivity_table(records)
    written.append(_atomic(out / "types_sensitivity.md", lambda tmp: tmp.write_text(table)))
    layers, names = records["layers"], list(records["grid"])
    fig = new_figure(figsize=(3.0 * len(names), 2.3 * len(layers) + 0.6))
    axes = fig.subplots(len(layers), len(names), squeeze=False, sharey="row")
    shown = [*GROUPS, "dead"]  # mixed is the remainder
    for k, layer in enumerate(layers):
        for j, name in enumerate(names):
            ax = axes[k, j]
            rows = [r for r in layer["rows"] if r["threshold"] == name]
            x = [r["value"] for r in rows]
            for t in shown:
                ax.plot(x, [100 * r["shares"][t] for r in rows], marker="o", ms=3, label=t)
            ax.plot(x, [100 * r["random_typed"] for r in rows], "k--", lw=1,
                    label="random latents typed")
            ax.axvline(records["defaults"][name], color="grey", lw=0.8, ls=":")
            if k == len(layers) - 1:
                ax.set_xlabel(LABELS.get(name, name), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"layer {k}: % of features", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    save_figure(fig, out / "types_sensitivity.png", dpi=100)
    written.append(out / "types_sensitivity.png")
    return written
