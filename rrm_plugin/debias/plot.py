"""The debiasing figure, drawn from the JSON summary: accuracy per group before and after, and
every method's average and worst-group accuracy with their 95% intervals."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rrm_plugin.debias.experiment import RRM
from rrm_plugin.plotting import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_debias(summary: dict, path: Path | None = None) -> Figure:
    """The figure; a PNG at `path` when given."""

    methods = summary["methods"]
    groups = list(methods["original"]["per_group"])
    fig = new_figure(figsize=(11, 7.5))
    ax1, ax2 = fig.subplots(2, 1)
    shown = [m for m in ("original", RRM, "balanced_retrain") if m in methods]
    width = 0.8 / len(shown)
    x = np.arange(len(groups))
    for i, m in enumerate(shown):
        values = [100 * methods[m]["per_group"][g] for g in groups]
        ax1.bar(x + (i - (len(shown) - 1) / 2) * width, values, width, label=methods[m]["label"])
    ax1.set_xticks(x, groups, rotation=60, fontsize=7)
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("accuracy per group (class / marker agrees or disagrees), before and after")
    ax1.legend(fontsize=8, loc="upper center", ncol=len(shown))
    ax1.set_ylim(0, 122)
    ax1.set_yticks(range(0, 101, 20))

    names = list(methods)
    y = np.arange(len(names))
    for offset, key, colour in ((-0.18, "average", "tab:gray"), (0.18, "worst_group", "tab:red")):
        est = np.array([100 * methods[m][key]["estimate"] for m in names])
        low = np.array([100 * methods[m][key]["low"] for m in names])
        high = np.array([100 * methods[m][key]["high"] for m in names])
        ax2.errorbar(est, y + offset, xerr=[est - low, high - est], fmt="o", color=colour,
                     capsize=3, label=key.replace("_", "-") + " accuracy (95% CI)")
    ax2.set_yticks(y, [methods[m]["label"] for m in names], fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("test accuracy (%)")
    ax2.legend(fontsize=8, loc="lower left")
    ax2.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
