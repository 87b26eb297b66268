"""Self-contained HTML circuit viewer (`rrm view`, written by `rrm trace`)."""

from rrm_plugin.viewer.build import build_viewer, view_directory
from rrm_plugin.viewer.payload import ImageContext, viewer_payload
from rrm_plugin.viewer.render import render_html, write_html
from rrm_plugin.viewer.steps import CircuitStep, influence_steps, paper_steps

__all__ = [
    "CircuitStep",
    "ImageContext",
    "build_viewer",
    "influence_steps",
    "paper_steps",
    "render_html",
    "view_directory",
    "viewer_payload",
    "write_html",
]
