"""The written page: its Content-Security-Policy allows exactly its own script and style by hash,
and the embedded JSON cannot end its element."""

import base64
import hashlib
import html
import json
import re

import pytest

from rrm_plugin.viewer.payload import viewer_payload
from rrm_plugin.viewer.render import embedded_json, render_html, write_index
from rrm_plugin.viewer.steps import paper_steps
from tests.viewer.conftest import hand_graph


def policy_of(page: str) -> dict[str, list[str]]:
    meta = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page)
    assert len(meta) == 1
    out = {}
    for part in html.unescape(meta[0]).split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_policy_allows_the_page_script_and_style_by_hash_only():
    payload = viewer_payload(hand_graph(), paper_steps(hand_graph()), title="t")
    page = render_html(payload)
    policy = policy_of(page)
    # Every inline script of the page that runs (no type): exactly one, allowed by its hash.
    code = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(code) == 1 and len(re.findall(r"<script\b", page)) == 2
    assert 'type="application/json" id="rrm-data"' in page
    assert policy["script-src"] == [sha256_source(code[0])]
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert policy["style-src"] == [sha256_source(styles[0])] and len(styles) == 1
    assert policy["default-src"] == ["'none'"] and policy["img-src"] == ["data:"]
    assert all("'unsafe-inline'" not in v and "'unsafe-eval'" not in v and "*" not in v
               for v in policy.values())
    # A hash-only policy also refuses inline handlers and style attributes: the page has none.
    assert not re.search(r"\son[a-z]+\s*=", page) and not re.search(r"\sstyle\s*=", page)
    assert "innerHTML" not in page and "outerHTML" not in page and "insertAdjacentHTML" not in page


@pytest.mark.parametrize("text", ["</script><script>alert(1)</script>", "</SCRIPT >",
                                  "<!--<script>", "a\u2028b\u2029c", "&lt;&amp;", "]]>"])
def test_embedded_json_cannot_leave_its_element(text):
    payload = {"title": text, "nested": [{"k": text}]}
    data = embedded_json(payload)
    assert not set(data) & set("<>&\u2028\u2029")
    assert json.loads(data) == payload
    page = render_html({**viewer_payload(hand_graph(), paper_steps(hand_graph())),
                        "title": text})
    block = re.search(r'id="rrm-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(block)["title"] == text
    # The title is text in <title>, and a placeholder name in it stays text.
    assert f"<title>{html.escape(text)}</title>" in page


def test_placeholder_names_in_the_data_stay_data():
    payload = viewer_payload(hand_graph(), paper_steps(hand_graph()),
                             title="__RRM_DATA__ __RRM_CSP__ __RRM_TITLE__")
    page = render_html(payload)
    block = re.search(r'id="rrm-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(block)["title"] == payload["title"]
    assert "<title>__RRM_DATA__ __RRM_CSP__ __RRM_TITLE__</title>" in page
    assert policy_of(page)["script-src"][0].startswith("'sha256-")


def test_index_links_stay_relative_and_its_policy_hashes_its_style(tmp_path):
    path = write_index(tmp_path / "index.html", [
        {"href": "javascript:alert(1)/circuit.html", "label": "<b>'x'</b>",
         "numbers": {"class": "\"><script>"}}], title="t")
    page = path.read_text()
    assert 'href="./javascript%3Aalert%281%29/circuit.html"' in page
    assert "&lt;b&gt;&#x27;x&#x27;&lt;/b&gt;" in page and "&quot;&gt;&lt;script&gt;" in page
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    policy = policy_of(page)
    assert policy == {"default-src": ["'none'"], "style-src": [sha256_source(style)]}
