"""Feature-type results as files: `types.json`, the shares table and the shares figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rrm_plugin.features.types import FeatureTypes
from rrm_plugin.features.types_rule import FACTORS, GROUPS, TYPES
from rrm_plugin.features.types_sensitivity import write_sensitivity
from rrm_plugin.io import _atomic, write_json
from rrm_plugin.plotting import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _round(t: Tensor) -> list:
    return torch.round(t * 1e5).div(1e5).tolist()


def types_records(result: FeatureTypes) -> dict[str, Any]:
    return {
        "format": "rrm-feature-types/1", "settings": result.settings,
        "level_values": result.level_values,
        "layers": [{
            "hook_name": hook, "shares": lt.shares(), "types": lt.types,
            "eta2": _round(lt.eta2), "null_mean": _round(lt.null_mean),
            "p_values": _round(lt.p_values), "group_scores": _round(lt.group_scores),
            "groups": list(GROUPS), "fire_fraction": _round(lt.fire_fraction),
            "orientation_tuning": _round(lt.orientation_tuning),
            "curve_tuning": _round(lt.curve_tuning),
            "random_floor": _round(lt.random_floor),
            "random_latent_shares": {t: lt.random_types.count(t) / len(lt.random_types)
                                     for t in TYPES},
            "random_group_scores": _round(lt.random_scores),
            "random_fire_fraction": _round(lt.random_fire_fraction),
        } for hook, lt in result.layers.items()],
    }


def shares_table(result: FeatureTypes) -> str:
    """Markdown table of type shares (%) per layer."""
    lines = ["| layer | " + " | ".join(TYPES) + " |", "|---" * (len(TYPES) + 1) + "|"]
    for k, (hook, lt) in enumerate(result.layers.items()):
        shares = lt.shares()
        lines.append(f"| {k} ({hook}) | " + " | ".join(f"{100 * shares[t]:.1f}" for t in TYPES)
                     + " |")
    return "\n".join(lines)


def write_types(result: FeatureTypes, out_dir: Path) -> list[Path]:
    """types.json, types_table.md, type_shares.png, tuning_examples.png and the threshold
    sensitivity (types_sensitivity.json/.md/.png)."""
    out = Path(out_dir)
    written = [write_json(out / "types.json", types_records(result))]
    table = shares_table(result)
    written.append(_atomic(out / "types_table.md", lambda tmp: tmp.write_text(table + "\n")))
    plot_type_shares(result, out / "type_shares.png")
    plot_tuning_examples(result, out / "tuning_examples.png")
    return [*written, out / "type_shares.png", out / "tuning_examples.png",
            *write_sensitivity(result, out)]


def plot_type_shares(result: FeatureTypes, path: Path | None = None) -> Figure:
    """Stacked bars: each type's share of the features, per layer (saved only with `path`)."""
    hooks = list(result.layers)
    fig = new_figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bottom = torch.zeros(len(hooks))
    for t in TYPES:
        share = torch.tensor([result.layers[h].shares()[t] for h in hooks])
        ax.bar(range(len(hooks)), share, bottom=bottom, label=t)
        bottom += share
    ax.set_xticks(range(len(hooks)), [f"layer {k}" for k in range(len(hooks))])
    ax.set_ylabel("share of features")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_tuning_examples(result: FeatureTypes, path: Path | None = None) -> Figure:
    """Tuning curves of the best orientation and curve features of every layer."""
    hooks = list(result.layers)
    index = {f: i for i, f in enumerate(FACTORS)}
    fig = new_figure(figsize=(3.2 * len(hooks), 5.5))
    axes = fig.subplots(2, len(hooks), squeeze=False)
    degrees = result.level_values["orientation"]
    curvatures = result.level_values["curve"]
    for k, hook in enumerate(hooks):
        lt = result.layers[hook]
        excess = lt.eta2 - lt.null_mean
        for row, factor in enumerate(("orientation", "curve")):
            ax = axes[row, k]
            best = excess[:, index[factor]].topk(3).indices.tolist()
            for f in best:
                if factor == "orientation":
                    ax.plot(degrees, lt.orientation_tuning[f], marker="o", label=f"F{f}")
                else:
                    ax.plot(curvatures, lt.curve_tuning[f].mean(1), marker="o", label=f"F{f}")
            ax.set_xlabel("bar orientation (deg)" if factor == "orientation"
                          else "arc curvature (1/px), mean over bows")
            ax.set_title(f"layer {k}: best {factor} features", fontsize=9)
            ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("mean max activation")
    axes[1, 0].set_ylabel("mean max activation")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
