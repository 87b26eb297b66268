"""The debiasing figure, drawn from the study JSON: per method, worst-group accuracy of every
seed (dots) with mean ± s.e., and average / cue-agreeing / cue-conflicting accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rrm_plugin.debias.study import check_study
from rrm_plugin.plotting import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_debias(study: dict, path: Path | None = None) -> Figure:
    """The figure; a PNG at `path` when given. Refuses JSON of older formats."""
    check_study(study)
    summary = study["summary"]
    names = list(summary)
    y = np.arange(len(names))
    fig = new_figure(figsize=(11, 0.55 * len(names) + 2.5))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    for i, m in enumerate(names):
        values = [100 * s["methods"][m]["worst_group"] for s in study["per_seed"]]
        ax1.scatter(values, np.full(len(values), i), color="tab:red", alpha=0.35, s=14)
    for ax, keys in ((ax1, (("worst_group", "tab:red"),)),
                     (ax2, (("agree", "tab:green"), ("average", "tab:gray"),
                            ("conflict", "tab:blue")))):
        for j, (key, colour) in enumerate(keys):
            offset = (j - (len(keys) - 1) / 2) * 0.22
            mean = np.array([100 * summary[m][key]["mean"] for m in names])
            se = np.array([100 * summary[m][key]["se"] for m in names])
            ax.errorbar(mean, y + offset, xerr=se, fmt="o", color=colour, capsize=3,
                        label=f"{key.replace('_', '-')} (mean ± s.e.)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("test accuracy (%)")
        ax.legend(fontsize=8, loc="best")
    ax1.set_yticks(y, [summary[m]["label"] for m in names], fontsize=8)
    ax1.invert_yaxis()
    n = len(study["seeds"])
    ax1.set_title(f"worst-group accuracy, {n} seeds (dots: each seed)", fontsize=10)
    ax2.set_title("cue agrees / balanced average / cue conflicts", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
