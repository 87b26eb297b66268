"""Figures through matplotlib's object API, with no global state.

`new_figure` makes a free-standing `matplotlib.figure.Figure`: pyplot never sees it, so nothing is
shown, no backend is chosen or switched (a notebook keeps its own), and the figure is freed like
any object once the caller drops it. Saving renders with Agg through the figure's own canvas.
Every plotting function of the package returns its `Figure` and writes a PNG only when given a
path (`save_figure`, atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rrm_plugin.io import _atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(*, figsize: tuple[float, float]) -> Figure:
    """A figure not registered with pyplot (matplotlib is imported here, on first use)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def save_figure(fig: Figure, path: Path | None, *, dpi: int) -> Figure:
    """Write `fig` as a PNG at `path` (atomically, parents created) unless `path` is None."""
    if path is not None:
        _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return fig
