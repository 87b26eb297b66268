"""Every notebook runs top to bottom in a real Jupyter kernel; the inline viewer works in Chromium.

The notebooks are stored without outputs. The real-ViT notebook runs against a Hugging Face cache
of random weights of the real shapes (tests/hubcache.py), offline.
"""

from __future__ import annotations

import html
import re

import nbformat
import pytest

from tests.hubcache import vit_b16_hub  # noqa: F401  (fixture)
from tests.notebooks.run import NOTEBOOKS, ROOT, execute
from tests.viewer.browser import browser_page, unavailable_reason

BY_NAME = {p.name: p for p in NOTEBOOKS}


def test_every_notebook_is_stored_without_outputs():
    assert set(BY_NAME) == {"01_quickstart_digits.ipynb", "02_real_vit_b16.ipynb",
                            "03_analyses.ipynb"}
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code, path.name
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.source)


def html_outputs(book) -> list[str]:
    return [o["data"]["text/html"] for c in book.cells if c.cell_type == "code"
            for o in c.outputs if "text/html" in o.get("data", {})]


def figures(book) -> int:
    return sum("image/png" in o.get("data", {}) for c in book.cells if c.cell_type == "code"
               for o in c.outputs)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    return execute(BY_NAME["01_quickstart_digits.ipynb"], cwd=tmp_path_factory.mktemp("nb"))


def test_quickstart_runs_and_shows_tables_figure_and_viewer(quickstart):
    pages = html_outputs(quickstart)
    assert any("<td>digits-vit</td>" in p for p in pages)          # list_models as a table
    assert sum(p.startswith("<iframe srcdoc=") for p in pages) == 2  # the result and show(...)
    assert figures(quickstart) >= 1
    printed = "".join(o.get("text", "") for c in quickstart.cells if c.cell_type == "code"
                      for o in c.outputs if o["output_type"] == "stream" and o["name"] == "stdout")
    assert re.search(r"switched off: predicted (\d) -> (?!\1)\d", printed), printed


def test_analyses_notebook_runs_with_a_figure_per_section(tmp_path):
    book = execute(BY_NAME["03_analyses.ipynb"], cwd=tmp_path)
    assert figures(book) == 5  # faithfulness, lens, top images, type shares, debias


@pytest.mark.slow
def test_real_vit_notebook_runs_offline_on_random_weights(vit_b16_hub, tmp_path):  # noqa: F811
    cache, _, _ = vit_b16_hub
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "RRM_NOTEBOOK_FIXTURE": "1",
           "TORCH_HOME": str(tmp_path / "torch"), "RRM_PLUGIN_CACHE": str(tmp_path / "rrm")}
    book = execute(BY_NAME["02_real_vit_b16.ipynb"], env=env, cwd=tmp_path)
    assert any("<td>rrm-vit-b16-imagenet</td>" in p for p in html_outputs(book))
    assert any(p.startswith("<iframe srcdoc=") for p in html_outputs(book))
    assert figures(book) >= 1


# --- the inline viewer of an executed notebook, in Chromium --------------------------------------

REASON = unavailable_reason()


@pytest.mark.skipif(REASON is not None, reason=f"no browser: {REASON}")
def test_inline_viewers_work_side_by_side_in_chromium(quickstart, tmp_path):
    frames = [p for p in html_outputs(quickstart) if p.startswith("<iframe srcdoc=")]
    srcdoc = re.match(r'<iframe srcdoc="([^"]*)"', frames[0]).group(1)
    assert html.unescape(srcdoc).startswith("<!DOCTYPE html>")
    # The notebook page: both outputs in one document, as Jupyter shows them.
    page_path = tmp_path / "notebook_outputs.html"
    page_path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                         + "".join(f"<div class='output'>{f}</div>" for f in frames)
                         + "</body></html>", encoding="utf-8")
    with browser_page() as (page, events):
        page.goto(page_path.resolve().as_uri())
        viewers = [f for f in page.frames if f != page.main_frame]
        assert len(viewers) == 2
        for frame in viewers:
            frame.wait_for_selector("body[data-ready='1']", timeout=60_000)
            assert frame.evaluate("rrmViewer.drawnNodes") > 1
        first, second = viewers
        before = first.evaluate("rrmViewer.drawnNodes")
        # The slider changes the circuit of this viewer only.
        first.locator("#node-slider").focus()
        for _ in range(6):
            page.keyboard.press("ArrowLeft")
        assert first.evaluate("rrmViewer.drawnNodes") != before
        assert second.evaluate("rrmViewer.drawnNodes") == before
        # A click on a drawn feature node pins it and shows its card.
        node = next(n for n in first.evaluate("rrmViewer.drawnList()")
                    if first.evaluate(f"rrmViewer.data.nodes.kind[{n}]") == 0)
        at = first.evaluate(f"rrmViewer.nodePosition({node})")
        box = page.locator("iframe").first.bounding_box()
        page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
        assert first.evaluate("rrmViewer.state.pinned") == node
        assert first.locator("#card").is_visible()
        assert second.evaluate("rrmViewer.state.pinned") == -1
        assert events["errors"] == [] and events["failed"] == []
        assert [c for c in events["console"] if c[0] in ("error", "warning")] == []
        assert [u for u in events["requests"] if not u.startswith(("file://", "data:", "about:"))
                ] == []


def test_readme_links_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for name in BY_NAME:
        assert f"(notebooks/{name})" in readme, name
