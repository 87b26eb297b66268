"""The viewer inline in a notebook: the page of `circuit.html` in an isolated frame.

The page carries its own scripts, styles, element ids and Content-Security-Policy. Shown through
an `<iframe srcdoc>` with `sandbox="allow-scripts"` (an opaque origin), it cannot see the
notebook or another viewer on the same page, and the notebook's styles cannot reach it: several
viewers in one notebook never share ids or globals, and nothing is fetched.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rrm_plugin.attribution.graph import Graph
from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import _atomic
from rrm_plugin.viewer.build import build_viewer
from rrm_plugin.viewer.render import render_html

FRAME_HEIGHT = 760  # px: the viewer's graph, image and card panels without an inner scroll bar


def frame_html(page: str, *, height: int = FRAME_HEIGHT) -> str:
    """`page` (a whole HTML document) as an isolated, sandboxed inline frame."""
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" '
            f'style="width:100%;height:{int(height)}px;border:0" sandbox="allow-scripts" '
            'title="rrm-plugin circuit viewer"></iframe>')


class Viewer:
    """A viewer page that a notebook shows inline (`_repr_html_`); `.html` is the page's text,
    the same as `circuit.html`, and `.save(path)` writes it."""

    def __init__(self, page: str, *, height: int = FRAME_HEIGHT) -> None:
        self.html = page
        self.height = height

    def _repr_html_(self) -> str:
        return frame_html(self.html, height=self.height)

    def save(self, path: str | Path) -> Path:
        """Write the page to `path` atomically; returns the path."""
        return _atomic(Path(path), lambda tmp: tmp.write_text(self.html, encoding="utf-8"))

    def __repr__(self) -> str:
        return f"Viewer({len(self.html):,} characters of HTML; shown inline in a notebook)"


def show(obj: Any, *, height: int = FRAME_HEIGHT, node_threshold: float = 0.8,
         edge_threshold: float = 0.98, **build: Any) -> Viewer:
    """The interactive viewer of a trace, a graph or a viewer payload, to show in a notebook.

    Args:
        obj: A `TraceResult` (its page), a `Graph` (its circuit at the given influence
            thresholds; pass `model=`, `saes=`, `image=`, `baselines=` for the image, heat
            maps and readouts, as `build_viewer` takes them), or a viewer payload dict.
        height: The frame's height in pixels.
        node_threshold: Graphs only: circuit-tracer node threshold shown first.
        edge_threshold: Graphs only: circuit-tracer edge threshold shown first.
        **build: Graphs only: `build_viewer`'s keyword arguments.
    """
    if isinstance(obj, Graph):
        payload = build_viewer(obj, default_params={"node_threshold": node_threshold,
                                                    "edge_threshold": edge_threshold}, **build)
        return Viewer(render_html(payload), height=height)
    if build:
        raise RRMUserError(f"{sorted(build)} apply to a Graph; got a {type(obj).__name__}")
    if isinstance(obj, Mapping):
        return Viewer(render_html(dict(obj)), height=height)
    if callable(getattr(obj, "html", None)):
        return Viewer(obj.html(), height=height)
    raise RRMUserError(f"show takes a TraceResult, a Graph or a viewer payload, got a "
                       f"{type(obj).__name__}")
