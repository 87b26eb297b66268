"""Render the viewer payload into one self-contained HTML file (inline JS/CSS, data URIs).

The page's Content-Security-Policy allows its own script and style block by SHA-256 hash only
(no 'unsafe-inline', no network, images from data: URLs), so nothing in the payload can run even
if it reached the markup; the script also builds every element with `textContent` and refuses
image URLs that are not PNG / JPEG data URLs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rrm_plugin.io import _atomic

_MARK = re.compile(r"__RRM_(DATA|TITLE|CSP)__")
# The code's own <script> (no attributes) and <style> blocks, whose hashes the policy allows.
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_STYLE = re.compile(r"<style>(.*?)</style>", re.S)
# Characters that could end or confuse the <script type="application/json"> element (or an
# HTML parser reading it); JSON allows them only inside strings, where \\uXXXX is the same text.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                 "\u2029": "\\u2029"}


NONE = "'none'"


def template() -> str:
    return resources.files("rrm_plugin.viewer").joinpath("template.html").read_text("utf-8")


def source_hash(text: str) -> str:
    """A CSP source expression allowing the inline block with this exact text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_policy(page: str) -> str:
    """The policy of a page: nothing from anywhere, but its inline scripts and styles (by
    hash) and data: images."""
    scripts = " ".join(source_hash(m) for m in _SCRIPT.findall(page))
    styles = " ".join(source_hash(m) for m in _STYLE.findall(page))
    return (f"default-src 'none'; script-src {scripts or NONE}; style-src {styles or NONE}; "
            "img-src data:; "
            "base-uri 'none'; form-action 'none'")


def embedded_json(payload: dict[str, Any]) -> str:
    """The payload as JSON text that cannot end (or open anything in) its <script> element."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], text)


def render_html(payload: dict[str, Any]) -> str:
    """The page: the template with the payload embedded as JSON."""
    page = template()
    marks = _MARK.findall(page)
    if sorted(marks) != ["CSP", "DATA", "TITLE"] or len(_SCRIPT.findall(page)) != 1:
        raise RuntimeError("viewer template is damaged: expected one data, title and policy "
                           "placeholder and one code <script>")
    parts = {"DATA": embedded_json(payload),
             "TITLE": html.escape(payload.get("title") or "circuit"),
             "CSP": html.escape(content_policy(page), quote=False)}
    # One pass, so a title or payload containing a placeholder's name stays text.
    return _MARK.sub(lambda m: parts[m.group(1)], page)


def write_html(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write the page atomically; returns its path."""
    text = render_html(payload)
    return _atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


_INDEX_STYLE = ("body{font:13px system-ui,sans-serif;margin:16px}td,th{padding:3px 8px;"
                "border-bottom:1px solid #ddd;text-align:left}")


def write_index(path: str | Path, entries: list[dict[str, Any]], *, title: str) -> Path:
    """An index page linking the per-image viewers (`entries`: href, label, numbers)."""
    # Hrefs are relative paths: "./" and percent-encoding keep a folder named like a URL
    # (`javascript:...`) a path.
    rows = "\n".join(
        f"<tr><td><a href=\"./{html.escape(quote(e['href']))}\">{html.escape(e['label'])}</a>"
        "</td>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in e.get("numbers", {}).values())
        + "</tr>" for e in entries)
    heads = "".join(f"<th>{html.escape(k)}</th>" for k in (entries[0].get("numbers", {})
                                                              if entries else {}))
    policy = f"default-src 'none'; style-src {source_hash(_INDEX_STYLE)}"
    text = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" "
            f"content=\"{html.escape(policy, quote=False)}\">"
            f"<title>{html.escape(title)}</title><style>{_INDEX_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table><tr><th>image</th>{heads}</tr>{rows}</table>"
            "</body></html>\n")
    return _atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
