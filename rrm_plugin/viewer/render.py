"""Render the viewer payload into one self-contained HTML file (inline JS/CSS, data URIs)."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from rrm_plugin.io import _atomic

_DATA_MARK = "__RRM_DATA__"
_TITLE_MARK = "__RRM_TITLE__"


def template() -> str:
    return resources.files("rrm_plugin.viewer").joinpath("template.html").read_text("utf-8")


def render_html(payload: dict[str, Any]) -> str:
    """The page: the template with the payload embedded as JSON."""
    # `</` inside a <script> element would end it; JSON allows the escaped form.
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    page = template()
    if page.count(_DATA_MARK) != 1:
        raise RuntimeError("viewer template is damaged: expected one data placeholder")
    return page.replace(_TITLE_MARK, html.escape(payload.get("title") or "circuit")) \
        .replace(_DATA_MARK, data)


def write_html(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write the page atomically; returns its path."""
    text = render_html(payload)
    return _atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_index(path: str | Path, entries: list[dict[str, Any]], *, title: str) -> Path:
    """An index page linking the per-image viewers (`entries`: href, label, numbers)."""
    rows = "\n".join(
        f"<tr><td><a href=\"{html.escape(e['href'])}\">{html.escape(e['label'])}</a></td>"
        + "".join(f"<td>{html.escape(str(v))}</td>" for v in e.get("numbers", {}).values())
        + "</tr>" for e in entries)
    heads = "".join(f"<th>{html.escape(k)}</th>" for k in (entries[0].get("numbers", {})
                                                              if entries else {}))
    text = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            f"style-src 'unsafe-inline'\"><title>{html.escape(title)}</title>"
            "<style>body{font:13px system-ui,sans-serif;margin:16px}td,th{padding:3px 8px;"
            "border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table><tr><th>image</th>{heads}</tr>{rows}</table>"
            "</body></html>\n")
    return _atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
