"""The viewer in a real browser: loads offline, draws the Python circuit, hovers, slides, pins."""

from __future__ import annotations

import pytest
import torch

from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.circuits.pruning import edge_rule
from rrm_plugin.viewer.build import build_viewer, write_viewer
from tests.viewer.browser import browser_page, open_viewer, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no browser: {REASON}")


@pytest.fixture(scope="module")
def session(digits):
    _, _, page_path = digits
    with browser_page() as (page, events):
        open_viewer(page, page_path)
        yield page, events


def python_drawn(masks) -> int:
    """Nodes the page must draw with no node budget: the kept latents and errors, plus the
    logit node."""
    return int(sum(int(m.sum()) for m in masks)) + 1


def reset(page, *, budget: int = 40, edges: int = 3) -> None:
    """The default view again (the session's page is shared by the tests)."""
    page.evaluate("rrmViewer.state.supers.length = 0; rrmViewer.state.subgraph = false;"
                  "rrmViewer.resetZoom(); rrmViewer.pin(-1);"
                  f"rrmViewer.setEdgeBudget({edges}); rrmViewer.setBudget({budget});"
                  "rrmViewer.setStep(rrmViewer.data.default_step)")


def test_loads_offline_without_errors(session, digits):
    page, events = session
    assert events["errors"] == [] and events["failed"] == []
    assert [c for c in events["console"] if c[0] in ("error", "warning")] == []
    # Only the file itself is requested (images are data URIs, scripts inline).
    assert [u for u in events["requests"] if not u.startswith(("file://", "data:"))] == []
    assert page.evaluate("document.getElementById('input-image').naturalWidth") > 0


def test_default_view_draws_the_python_circuit(session, digits):
    page, _ = session
    graph = digits[0]
    reset(page, budget=10**9, edges=0)  # no node or edge budget: the whole circuit
    expected = prune_by_influence(graph, node_threshold=0.8, edge_threshold=0.98)
    assert page.evaluate("rrmViewer.drawnNodes") == python_drawn(expected.node_masks)
    assert page.inner_text("#stat-drawn-nodes") == str(python_drawn(expected.node_masks))
    kept_edges = sum(int(m.sum()) for m in expected.edge_masks) + int(
        expected.logit_edge_mask.sum())
    # Every kept edge of the digits graph is embedded (it has fewer than 20,000).
    assert page.evaluate("rrmViewer.drawnEdges") == kept_edges


def test_node_slider_redraws_as_python_prunes(session, digits):
    page, _ = session
    graph = digits[0]
    reset(page, budget=10**9)
    slider = page.locator("#node-slider")
    seen = set()
    slider.focus()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")
        threshold = float(page.inner_text("#node-value"))
        edge = float(page.inner_text("#edge-value"))
        expected = prune_by_influence(graph, node_threshold=threshold, edge_threshold=edge)
        drawn = page.evaluate("rrmViewer.drawnNodes")
        assert drawn == python_drawn(expected.node_masks), threshold
        seen.add(drawn)
    assert threshold == pytest.approx(0.5) and len(seen) > 2
    page.locator("#edge-slider").focus()
    page.keyboard.press("End")
    expected = prune_by_influence(graph, node_threshold=0.5, edge_threshold=1.0)
    assert page.evaluate("rrmViewer.drawnNodes") == python_drawn(expected.node_masks)


def test_paper_rule_toggle(session, digits):
    page, _ = session
    graph = digits[0]
    reset(page, budget=10**9)
    page.select_option("#mode", "edge_rule")
    p = float(page.inner_text("#paper-value"))
    assert page.inner_text("#paper-name") == "p"
    assert page.evaluate("rrmViewer.drawnNodes") == python_drawn(edge_rule(graph, p=p))
    page.locator("#paper-slider").focus()
    page.keyboard.press("ArrowRight")
    p = float(page.inner_text("#paper-value"))
    assert page.evaluate("rrmViewer.drawnNodes") == python_drawn(edge_rule(graph, p=p))
    page.select_option("#mode", "influence")
    assert page.inner_text("#node-value") == "0.8"


def _strongest_drawn_feature(page, payload):
    drawn = page.evaluate("rrmViewer.drawnList()")
    features = [n for n in drawn if payload["nodes"]["kind"][n] == 0]
    return max(features, key=lambda n: abs(payload["nodes"]["score"][n]))


def test_hover_shows_the_card(session, digits):
    page, _ = session
    payload = digits[1]
    reset(page)
    node = _strongest_drawn_feature(page, payload)
    at = page.evaluate(f"rrmViewer.nodePosition({node})")
    page.mouse.move(at["x"], at["y"])
    card = page.locator("#card")
    assert card.is_visible()
    name = f"L{payload['nodes']['layer'][node]}/F{payload['nodes']['feature'][node]}"
    text = card.inner_text()
    assert name in text and "class lens" in text and "influence on logit" in text
    # A feature node's activation is this image's, summed over all its tokens.
    assert f"activation on this image (sum over its {digits[0].n_tokens} tokens)\t" \
           f"{payload['nodes']['activation'][node]:.3f}" in text
    page.mouse.move(2, 2)
    assert not card.is_visible()


def test_click_pins_and_shows_active_patches(session, digits, tmp_path):
    page, _ = session
    payload = digits[1]
    node = _strongest_drawn_feature(page, payload)
    at = page.evaluate(f"rrmViewer.nodePosition({node})")
    page.mouse.click(at["x"], at["y"])
    assert page.evaluate("rrmViewer.state.pinned") == node
    # Red cells on the overlay exactly where the node is active on the image.
    rows, cols = payload["grid"]
    red = page.evaluate(f"""(() => {{
        const c = document.getElementById('image-overlay'), x = c.getContext('2d');
        const out = [];
        for (let p = 0; p < {rows * cols}; p++) {{
            const px = x.getImageData((p % {cols} + 0.5) * c.width / {cols},
                                      (Math.floor(p / {cols}) + 0.5) * c.height / {rows}, 1, 1);
            out.push(px.data[0] > 200);
        }}
        return out; }})()""")
    import base64

    heat = payload["heat"]
    latent = node - payload["nodes"]["layer"][node]
    values = base64.b64decode(heat["values"])[latent * heat["n_patches"]:
                                              (latent + 1) * heat["n_patches"]]
    assert red == [v > 0 for v in values] and any(red)
    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    page.mouse.click(at["x"], at["y"])
    assert page.evaluate("rrmViewer.state.pinned") == -1


def test_numbers_are_the_step_readouts(session, digits):
    page, _ = session
    payload = digits[1]
    page.select_option("#mode", "influence")
    step = payload["steps"][page.evaluate("rrmViewer.state.step")]
    assert step["params"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    kept = float(page.locator("#numbers tr", has_text="kept logit").locator("td").nth(1)
                 .inner_text())
    assert kept == pytest.approx(step["runs"]["insertion"]["adjusted_logit"], abs=1e-3)
    assert torch.isfinite(torch.tensor(kept))


def test_token_granularity_page(tmp_path, session, vit, saes, images, baselines):
    """Token nodes: the default circuit as Python prunes it; a pinned node lights its own patch."""
    from rrm_plugin.attribution import attribute

    image = images[0]
    graph = attribute(vit, saes, image[None], baselines=baselines, granularity="token")[0]
    payload = build_viewer(graph, model=vit, saes=saes, image=image, baselines=baselines)
    path = write_viewer(tmp_path, payload)
    page, events = session  # one Playwright per module: the sync API cannot nest
    open_viewer(page, path)
    reset(page, budget=10**9)
    expected = prune_by_influence(graph)
    assert page.evaluate("rrmViewer.drawnNodes") == python_drawn(expected.node_masks)
    node = next(n for n in page.evaluate("rrmViewer.drawnList()")
                if payload["nodes"]["kind"][n] == 0 and payload["nodes"]["token"][n] >= 1
                and payload["nodes"]["activation"][n] > 0)
    at = page.evaluate(f"rrmViewer.nodePosition({node})")
    page.mouse.move(at["x"], at["y"])
    tok = payload["nodes"]["token"][node]
    assert f"activation at token {tok} (this image)\t" \
           f"{payload['nodes']['activation'][node]:.3f}" in page.inner_text("#card")
    page.evaluate(f"rrmViewer.pin({node})")
    rows, cols = payload["grid"]
    lit = page.evaluate(f"""(() => {{
        const c = document.getElementById('image-overlay'), x = c.getContext('2d');
        const out = [];
        for (let p = 0; p < {rows * cols}; p++) out.push(x.getImageData(
            (p % {cols} + 0.5) * c.width / {cols},
            (Math.floor(p / {cols}) + 0.5) * c.height / {rows}, 1, 1).data[0] > 200);
        return out; }})()""")
    own = payload["nodes"]["token"][node] - payload["n_prefix"]
    assert [i for i, v in enumerate(lit) if v] == [own]
    assert events["errors"] == [] and events["failed"] == []
