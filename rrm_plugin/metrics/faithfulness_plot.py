"""The faithfulness figure: insertion and deletion mean curves of every method."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rrm_plugin.metrics.faithfulness_result import AXES, MODES, SCORED, FaithfulnessResult
from rrm_plugin.plotting import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_faithfulness(result: FaithfulnessResult, path: Path | None = None) -> Figure:
    """Insertion (top) and deletion (bottom) mean curves +- s.e. of every quantity; a PNG at
    `path` when given."""
    fig = new_figure(figsize=(4.5 * len(SCORED), 7.5))
    axes = fig.subplots(2, len(SCORED), squeeze=False)
    x = np.arange(len(result.config.sweep))
    symbol = "tau" if result.config.criterion == "threshold" else "p"
    for row, mode in enumerate(MODES):
        for col, q in enumerate(SCORED):
            ax = axes[row, col]
            for method in result.methods:
                curves = result.image_curves[method][mode][q]
                mean, se = curves.mean(0), np.zeros(curves.shape[1])
                if len(curves) > 1:
                    se = curves.std(0, ddof=1) / np.sqrt(len(curves))
                aucs = " / ".join(f"{result.auc(method, mode, q, axis=a).mean:.2f}" for a in AXES)
                (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{method} ({aucs})")
                ax.fill_between(x, mean - se, mean + se, color=line.get_color(), alpha=0.2)
            ax.set_xticks(x, [f"{p:g}" for p in result.config.sweep], rotation=60, fontsize=7)
            ax.set_title(f"{mode}: {q.replace('_', ' ')}", fontsize=10)
            ax.set_xlabel(f"sweep value {symbol} ({result.config.criterion}; evenly spaced)",
                          fontsize=8)
            ax.legend(fontsize=6, title=f"AUC {' / '.join(AXES)}", title_fontsize=6)
    fig.suptitle(f"faithfulness over {len(result.image_indices)} correctly classified images "
                 "(mean +- s.e.)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
