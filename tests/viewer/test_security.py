"""Hostile feature cards and viewer data in a real browser: nothing they carry ever runs.

Every hostile string tries to set `window.__pwned` (or open a dialog) through the ways data can
reach a page: markup (`<img onerror>`, `<svg onload>`, `"><...>`), attribute breaks with either
quote, `</script>` inside the embedded JSON, `javascript:` and non-image data URLs. The pages are
checked with their Content-Security-Policy and without it (the script's own defence alone), and
every node is hovered and clicked.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer
from rrm_plugin.cli.main import main
from rrm_plugin.io import write_json
from rrm_plugin.viewer.context import png_bytes
from rrm_plugin.viewer.payload import ImageContext, viewer_payload
from rrm_plugin.viewer.render import render_html
from rrm_plugin.viewer.steps import influence_steps, paper_steps
from tests.viewer.browser import browser_page, open_viewer, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no browser: {REASON}")

PWN = "window.__pwned=1"
HOSTILE = [
    f"<img src=x onerror={PWN}>",
    f"' onerror='{PWN}",
    f'" onerror="{PWN}',
    f"</script><script>{PWN}</script>",
    f'"><img src=x onerror={PWN}>',
    f"javascript:{PWN}",
    f"<svg onload={PWN}>",
    "\u2028</ScRiPt ><script>alert(1)</script>",
]
BAD_URLS = [
    f"data:image/png;base64,AAAA' onerror='{PWN}",  # the reported exploit
    f"javascript:{PWN}",
    "data:image/svg+xml;base64,PHN2ZyB4bWxucz0naHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmcnIG9ubG9hZD0n"
    "d2luZG93Ll9fcHduZWQ9MSc+PC9zdmc+",
    "data:text/html,<script>window.__pwned=1</script>",
    "http://127.0.0.1:9/x.png",
]
# Recorded before the page's own script runs (init scripts are not subject to the page's CSP).
WATCH = """window.__violations = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI), true);"""


def hostile_graph() -> Graph:
    """Two layers named by hostile strings, metadata full of them."""
    edges = torch.tensor([[1.0, 0.0, -2.0], [0.0, 3.0, 0.0], [0.5, 0.0, 0.0]])
    layer0 = GraphLayer(HOSTILE[4], 0, 8, torch.tensor([3, 7]), None, torch.tensor([1.0, 2.0]),
                        torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 3.0]), 0.5)
    layer1 = GraphLayer(HOSTILE[1], 1, 8, torch.tensor([1, 4, 5]), None,
                        torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]),
                        torch.tensor([2.5, -1.0, 0.0]), 0.25)
    return Graph([layer0, layer1], [edges], target_class=1, metric="adjusted_logit", value=1.75,
                 logits=torch.tensor([0.0, 2.125, -1.0]), granularity="feature", n_tokens=5,
                 metadata={"file": HOSTILE[3], "model": HOSTILE[0]})


def hostile_payload(graph: Graph) -> dict:
    """A payload that passes every Python check: hostile text only where text is allowed."""
    context = ImageContext(
        image_png=png_bytes(torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0)),
                            min_size=64),
        grid=(2, 2), n_prefix=1,
        patch_activations=torch.tensor([[1.0, 0, 0, 2], [0, 3, 0, 0], [1, 1, 1, 1],
                                        [0, 0, 2, 0], [4, 0, 0, 0]]),
        lens_top=[[(HOSTILE[(i + j) % len(HOSTILE)], 1.0 - j / 4) for j in range(3)]
                  for i in range(5)])
    steps = influence_steps(graph) + paper_steps(graph)
    return viewer_payload(graph, steps, context=context, title=HOSTILE[3] + HOSTILE[0])


def hostile_cards(graph: Graph, png: str) -> dict:
    cards = {}
    for k, layer in enumerate(graph.layers):
        for f in layer.features.tolist():
            cards[f"{k}:{f}"] = {
                "layer": k, "feature": f, "hook_name": layer.hook_name, "density_tokens": 0.25,
                "density_images": 0.5, "max_activation": 6.25, "type": HOSTILE[(k + f) % 8],
                "lens_top": [{"class": h, "score": 0.5} for h in HOSTILE],
                "top_images": [{"png": png, "activation": 4.0}]}
    return {"schema": "rrm-feature-cards/1", "model": HOSTILE[2], "release": HOSTILE[5],
            "cards": cards}


@pytest.fixture(scope="module")
def session():
    with browser_page() as (page, events):
        events["dialogs"] = []
        page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
        page.add_init_script(WATCH)
        yield page, events


def visit(page, events, path) -> dict:
    """Open a page; returns the event counts before it (to read only this page's events)."""
    before = {key: len(value) for key, value in events.items()}
    open_viewer(page, path)
    return before


def since(events, before) -> dict:
    return {key: value[before[key]:] for key, value in events.items()}


def widest_step(payload) -> int:
    return max(range(len(payload["steps"])), key=lambda i: payload["steps"][i]["node_count"])


CARD_DOM = """() => {
    const card = document.getElementById('card');
    const bad = [];
    for (const e of card.querySelectorAll('*')) {
        for (const a of e.attributes) if (/^on/i.test(a.name)) bad.push(e.tagName + ' ' + a.name);
        if (['SCRIPT', 'SVG', 'IFRAME', 'OBJECT', 'EMBED', 'A'].includes(e.tagName.toUpperCase()))
            bad.push(e.tagName);
        if (e.tagName === 'IMG' && !/^data:image\\/(png|jpeg);base64,[A-Za-z0-9+\\/=]+$/.test(
                e.getAttribute('src'))) bad.push('img ' + e.getAttribute('src'));
    }
    return {bad, text: card.innerText, images: card.querySelectorAll('img').length};
}"""


def hover_and_click_every_node(page, payload) -> list[dict]:
    page.evaluate(f"rrmViewer.setStep({widest_step(payload)})")
    cards = []
    for node in page.evaluate("rrmViewer.drawnList()"):
        at = page.evaluate(f"rrmViewer.nodePosition({node})")
        page.mouse.move(at["x"], at["y"])
        assert page.locator("#card").is_visible(), node
        cards.append({"node": node, **page.evaluate(CARD_DOM)})
        page.mouse.click(at["x"], at["y"])
        assert page.evaluate("rrmViewer.state.pinned") == node
        page.mouse.click(at["x"], at["y"])
    page.mouse.move(2, 2)
    return cards


def assert_nothing_ran(page, new, *, refusals: int = 0) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert new["dialogs"] == [] and new["errors"] == []
    assert page.evaluate("window.__violations") == []
    warnings = [text for kind, text in new["console"] if kind in ("error", "warning")]
    refused = [w for w in warnings if w.startswith("rrm viewer: refused the ")]
    assert warnings == refused and len(refused) == refusals, warnings
    assert [u for u in new["requests"] if not u.startswith(("file://", "data:"))] == []


def strip_policy(page_text: str) -> str:
    out, count = re.subn(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page_text)
    assert count == 1
    return out


@pytest.mark.parametrize("with_policy", [True, False], ids=["csp", "no-csp"])
def test_hostile_cards_and_viewer_data_never_run(tmp_path, session, with_policy):
    """`rrm view` of a trace folder whose graph, viewer.json and cards carry hostile text: it
    shows as text, the page works, nothing runs (with the CSP, and by the script alone)."""
    page, events = session
    graph = hostile_graph()
    graph.save(tmp_path / "graph.lossless")
    payload = hostile_payload(graph)
    write_json(tmp_path / "viewer.json", payload)
    cards = tmp_path / "cards.json"
    cards.write_text(json.dumps(hostile_cards(graph, payload["image"])))
    assert main(["view", str(tmp_path), "--feature-cards", str(cards)]) == 0
    path = tmp_path / "circuit.html"
    if not with_policy:
        path.write_text(strip_policy(path.read_text()))
    before = visit(page, events, path)
    assert page.evaluate("document.title") == HOSTILE[3] + HOSTILE[0]
    assert page.inner_text("#title") == HOSTILE[3] + HOSTILE[0]
    assert page.evaluate("document.getElementById('input-image').naturalWidth") == 64
    cards_seen = hover_and_click_every_node(page, payload)
    latent = [c for c in cards_seen if payload["nodes"]["kind"][c["node"]] == 0]
    assert len(latent) == 5 and all(c["bad"] == [] for c in cards_seen)
    for c in latent:
        # The hostile strings are on the card as text (innerText folds U+2028 and spaces).
        for text in HOSTILE[:7]:
            assert text in c["text"], (c["node"], text)
        assert c["images"] == 1
        # Both activations say what they are: this image's, summed over its tokens, and the
        # cards' maximum at one token over their images.
        activation = payload["nodes"]["activation"][c["node"]]
        assert f"activation on this image (sum over its 5 tokens)\t{activation:.3f}" in c["text"]
        assert "max activation (one token, over the feature cards' images)\t6.250" in c["text"]
    assert_nothing_ran(page, since(events, before))


def test_hostile_image_urls_are_refused_by_the_page(tmp_path, session):
    """Image URLs the Python checks would refuse, rendered anyway: the page refuses them."""
    page, events = session
    graph = hostile_graph()
    payload = hostile_payload(graph)
    payload["image"] = BAD_URLS[0]
    good = "data:image/png;base64," + base64.b64encode(png_bytes(torch.zeros(3, 2, 2))).decode()
    for key in payload["cards"]:
        payload["cards"][key]["top_images"] = [{"png": u, "activation": 1.0}
                                               for u in [*BAD_URLS, good]]
    path = tmp_path / "circuit.html"
    path.write_text(render_html(payload))
    before = visit(page, events, path)
    assert page.evaluate("document.getElementById('input-image').getAttribute('src')") is None
    assert "input image refused" in page.inner_text("#image-note")
    cards_seen = hover_and_click_every_node(page, payload)
    latent = [c for c in cards_seen if str(c["node"]) in payload["cards"]]
    assert len(latent) == 5 and all(c["bad"] == [] for c in cards_seen)
    # Only the one good thumbnail per card is an image; the others say they were refused.
    assert all(c["images"] == 1 and c["text"].count("[image refused]") == len(BAD_URLS)
               for c in latent)
    # One warning per refused URL (input image + 5 per card), once each.
    assert_nothing_ran(page, since(events, before), refusals=1 + len(BAD_URLS) * len(latent))


def test_markup_that_reaches_the_page_cannot_run(tmp_path, session):
    """The policy itself: a script or handler injected into the page's markup (as if escaping
    had failed) is blocked, while the page's own hashed script still runs."""
    page, events = session
    text = render_html(hostile_payload(hostile_graph()))
    injected = text.replace("<main>", f"<main><script>{PWN}</script>"
                            f"<img src=x onerror=\"{PWN}\"><b onclick=\"{PWN}\">x</b>", 1)
    path = tmp_path / "circuit.html"
    path.write_text(injected)
    before = visit(page, events, path)
    page.click("b")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    violations = page.evaluate("window.__violations")
    # The inline script, the image's src and its handler, the click handler: all refused.
    assert any(v.startswith("script-src") and v.endswith("inline") for v in violations)
    assert any(v.startswith("img-src") for v in violations), violations
    assert page.evaluate("document.body.dataset.ready") == "1"
    assert since(events, before)["dialogs"] == []
