"""The readable views of the page in a real browser: node and edge budgets, labels, pins,
pinned subgraph, search, zoom and pan, supernodes, the budget curve, the warning banner.

Each view is checked against an oracle computed here in Python from the payload alone."""

from __future__ import annotations

import base64
import copy
import itertools

import pytest

from rrm_plugin.viewer.render import write_html
from tests.viewer.browser import browser_page, open_viewer, unavailable_reason
from tests.viewer.test_browser import reset
from tests.viewer.test_payload import step_edges

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no browser: {REASON}")


@pytest.fixture(scope="module")
def session(digits):
    with browser_page() as (page, events):
        open_viewer(page, digits[2])
        yield page, events


def bits(b64: str, n: int) -> list[bool]:
    data = base64.b64decode(b64)
    return [bool((data[i // 8] >> (i % 8)) & 1) for i in range(n)]


class Oracle:
    """The page's views recomputed from the payload (independent of the page's code)."""

    def __init__(self, payload: dict, step: int):
        self.p = payload
        nodes, edges = payload["nodes"], payload["edges"]
        self.n = len(nodes["kind"]) - 1  # latents + errors; the logit node is index n
        self.logit = self.n
        self.src, self.tgt, self.w = edges["source"], edges["target"], edges["weight"]
        e = len(self.src)
        self.node_mask = bits(payload["steps"][step]["nodes"], self.n)
        self.edge_mask = step_edges(payload, step)
        assert len(self.edge_mask) == e
        infl = nodes["influence"]
        self.ranking = sorted(range(self.n), key=lambda i: (-infl[i], i))
        strength = sorted(range(e), key=lambda i: (-abs(self.w[i]), i))
        self.out = {i: [] for i in range(self.n + 1)}
        self.inn = {i: [] for i in range(self.n + 1)}
        for i in strength:
            self.out[self.src[i]].append(i)
            self.inn[self.tgt[i]].append(i)

    def in_circuit(self, node: int, pins=()) -> bool:
        return node == self.logit or self.node_mask[node] or node in pins

    def shown(self, budget: int, pins=()) -> set[int]:
        kept = [i for i in self.ranking if self.node_mask[i]][:budget]
        return {self.logit, *kept, *pins}

    def ok(self, e: int, shown: set[int], pins=()) -> bool:
        s, t = self.src[e], self.tgt[e]
        return (self.edge_mask[e] and s in shown and t in shown
                and self.in_circuit(s, pins) and self.in_circuit(t, pins))

    def edges(self, shown: set[int], k: int, pins=()) -> set[int]:
        out = set()
        for node in shown:
            for lists in (self.out, self.inn):
                good = [e for e in lists[node] if self.ok(e, shown, pins)]
                out.update(good if k == 0 else good[:k])
        return out

    def subgraph(self, pins: list[int], k: int) -> set[int]:
        def up(node):
            good = [e for e in self.out[node] if self.edge_mask[e]
                    and self.in_circuit(self.tgt[e], pins)]
            return [self.tgt[e] for e in (good if k == 0 else good[:k])]

        reach, todo = set(pins), list(pins)
        while todo:
            for t in up(todo.pop()):
                if t not in reach:
                    reach.add(t)
                    todo.append(t)

        def leads(node, seen=()):
            return node == self.logit or any(t in pins or leads(t) for t in up(node))

        return {*pins, self.logit, *(v for v in reach if leads(v))}


def page_edges(page) -> set[tuple[int, int]]:
    return {tuple(e) for e in page.evaluate("rrmViewer.drawnEdgeList()")}


def as_pairs(oracle: Oracle, edges) -> set[tuple[int, int]]:
    return {(oracle.src[e], oracle.tgt[e]) for e in edges}


def test_default_view_keeps_the_budget(session, digits):
    page, _ = session
    _, payload, _ = digits
    reset(page)
    step = page.evaluate("rrmViewer.state.step")
    oracle = Oracle(payload, step)
    assert sum(oracle.node_mask) > 40  # the circuit is larger than the budget
    shown = oracle.shown(40)
    drawn = set(page.evaluate("rrmViewer.drawnList()"))
    assert drawn == shown and len(drawn) == 41
    assert page.inner_text("#stat-drawn-nodes") == "41"
    assert page_edges(page) == as_pairs(oracle, oracle.edges(shown, 3))
    # The edge budget: 3 strongest in + out per node draws fewer edges than all of them.
    everything = oracle.edges(shown, 0)
    assert len(oracle.edges(shown, 3)) < len(everything)
    page.select_option("#edge-budget", "0")
    assert page_edges(page) == as_pairs(oracle, everything)
    page.select_option("#edge-budget", "1")
    assert page_edges(page) == as_pairs(oracle, oracle.edges(shown, 1))


def test_budget_controls(session, digits):
    page, _ = session
    _, payload, _ = digits
    reset(page)
    oracle = Oracle(payload, page.evaluate("rrmViewer.state.step"))
    page.locator("#budget-slider").focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("rrmViewer.state.budget") == 80
    assert set(page.evaluate("rrmViewer.drawnList()")) == oracle.shown(80)
    page.fill("#budget", "7")
    page.locator("#budget").dispatch_event("change")
    assert set(page.evaluate("rrmViewer.drawnList()")) == oracle.shown(7)
    assert page.inner_text("#stat-budget-insertion") == "not measured"
    # At a curve point, the numbers are that budget circuit's readouts.
    page.fill("#budget", "20")
    page.locator("#budget").dispatch_event("change")
    row = next(s for s in payload["steps"] if s["params"] == {"node_budget": 20})
    assert float(page.inner_text("#stat-budget-insertion")) == pytest.approx(
        row["runs"]["insertion"]["adjusted_logit"], abs=1e-3)
    assert float(page.inner_text("#stat-budget-deletion")) == pytest.approx(
        row["runs"]["deletion"]["adjusted_logit"], abs=1e-3)


def test_the_page_ranks_as_the_budget_circuits(session, digits):
    """The curve's circuits (Python) and the page's top-N (JS) are the same node sets."""
    page, _ = session
    _, payload, _ = digits
    points = page.evaluate("rrmViewer.curvePoints()")
    budgets = [s for s in payload["steps"] if s["mode"] == "budget"]
    assert [p["budget"] for p in points] == [s["params"]["node_budget"] for s in budgets]
    assert points[-1]["budget"] == len(payload["nodes"]["kind"]) - 1
    assert [p["insertion"] for p in points] == [s["runs"]["insertion"] for s in budgets]
    oracle = Oracle(payload, payload["default_step"])
    ranking = page.evaluate("rrmViewer.ranking()")
    assert ranking == oracle.ranking
    for row in budgets:
        b = row["params"]["node_budget"]
        mask = bits(row["nodes"], oracle.n)
        assert {i for i, v in enumerate(mask) if v} == set(ranking[:b])


def test_labels_are_present_and_do_not_overlap(session, digits):
    page, _ = session
    _, payload, _ = digits
    for budget in (40, 150):
        reset(page, budget=budget)
        boxes = page.evaluate("rrmViewer.labelBoxes()")
        drawn = page.evaluate("rrmViewer.drawnList()")
        assert sorted(b["n"] for b in boxes) == sorted(drawn)
        for a, b in itertools.combinations(boxes, 2):
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, (a, b)
    nodes = payload["nodes"]
    for n in drawn:
        text = page.evaluate(f"rrmViewer.labelText({n})")
        if nodes["kind"][n] == 0:
            lens = payload["cards"][str(n)]["lens_top"][0]["class"]
            assert text == f"L{nodes['layer'][n]} #{nodes['feature'][n]}\n{lens}"
        elif nodes["kind"][n] == 1:
            assert text == f"L{nodes['layer'][n]} error"


def test_barycentric_order_reduces_crossings(session):
    page, _ = session
    reset(page)
    page.evaluate("rrmViewer.setOrdering('influence')")
    by_influence = page.evaluate("rrmViewer.crossings()")
    page.evaluate("rrmViewer.setOrdering('barycentric')")
    by_barycentre = page.evaluate("rrmViewer.crossings()")
    # Measured on this page: 1175 against 789 (a third fewer); the margin leaves room for
    # ties in the sort, not for an ordering that does nothing.
    assert by_barycentre < 0.8 * by_influence


def test_multi_pin_search_and_side_panel(session, digits):
    page, _ = session
    _, payload, _ = digits
    reset(page)
    drawn = [n for n in page.evaluate("rrmViewer.drawnList()") if payload["nodes"]["kind"][n] == 0]
    for n in drawn[:2]:
        at = page.evaluate(f"rrmViewer.nodePosition({n})")
        page.mouse.click(at["x"], at["y"])
    assert page.evaluate("rrmViewer.state.pins") == drawn[:2]
    assert page.locator("#pins li").count() == 2
    assert page.locator("#card").is_visible()  # the last pinned node's card, beside the graph
    graph_box = page.locator("#graph").bounding_box()
    card_box = page.locator("#card").bounding_box()
    assert card_box["x"] >= graph_box["x"] + graph_box["width"]
    page.locator("#pins li").first.locator("button", has_text="×").click()
    assert page.evaluate("rrmViewer.state.pins") == drawn[1:2]
    # Search by layer and feature id finds a node outside the view; clicking pins and draws it.
    oracle = Oracle(payload, page.evaluate("rrmViewer.state.step"))
    hidden = next(n for n in oracle.ranking if payload["nodes"]["kind"][n] == 0
                  and n not in page.evaluate("rrmViewer.drawnList()"))
    layer, feature = payload["nodes"]["layer"][hidden], payload["nodes"]["feature"][hidden]
    page.fill("#search", f"L{layer} #{feature}")
    assert page.evaluate(f"rrmViewer.search('L{layer} #{feature}')") == [hidden]
    page.locator("#search-results li button").first.click()
    assert hidden in page.evaluate("rrmViewer.state.pins")
    assert hidden in page.evaluate("rrmViewer.drawnList()")
    # Search by class name: feature ids equal to the query first (digits' classes are
    # numbers), then every feature node with a lens class containing it, by influence.
    name = payload["cards"][str(drawn[0])]["lens_top"][0]["class"]
    features = [n for n in oracle.ranking if payload["nodes"]["kind"][n] == 0]
    by_id = [n for n in features if name.isdigit() and payload["nodes"]["feature"][n] == int(name)]
    by_class = [n for n in features if n not in by_id and any(
        name.lower() in e["class"].lower()
        for e in payload["cards"].get(str(n), {}).get("lens_top", []))]
    expected = (by_id + by_class)[:30]
    assert page.evaluate(f"rrmViewer.search({name!r})") == expected and by_class


def test_pinned_subgraph(session, digits):
    page, _ = session
    _, payload, _ = digits
    reset(page)
    oracle = Oracle(payload, page.evaluate("rrmViewer.state.step"))
    low = [n for n in oracle.ranking if oracle.node_mask[n] and payload["nodes"]["layer"][n] == 0
           and payload["nodes"]["kind"][n] == 0][:2]
    for n in low:
        page.evaluate(f"rrmViewer.pin({n})")
    page.check("#subgraph")
    expected = oracle.subgraph(low, 3)
    assert set(page.evaluate("rrmViewer.drawnList()")) == expected
    assert len(expected) > len(low) + 1  # paths up to the logit, not only the pins
    assert page_edges(page) == as_pairs(oracle, oracle.edges(expected, 3, pins=low))
    page.uncheck("#subgraph")


def test_pinned_subgraph_drops_nodes_that_do_not_reach_the_logit(session, digits, tmp_path):
    """A hand-built circuit where L0/F3's strong edge leads to L1/F5, whose logit edge is zero
    (so not on the page): F5 is reached from the pin but on no path to the logit, and the
    pinned subgraph leaves it out. (Influence circuits never hold such a node: pruning drops
    it; the paper's node rules keep nodes without looking at paths.)"""
    import torch

    from rrm_plugin.viewer.payload import viewer_payload
    from rrm_plugin.viewer.steps import CircuitStep, paper_steps
    from tests.viewer.conftest import hand_graph

    page, _ = session
    graph = hand_graph()
    every = [torch.ones(len(layer) + 1, dtype=torch.bool) for layer in graph.layers]
    whole = CircuitStep("node_rule", {"p": 1.0}, torch.cat(every),
                        [every[0][:, None] & every[1][None, :-1]], every[1].clone())
    payload = viewer_payload(graph, [whole, *paper_steps(graph)])
    # Viewer order: L0 F3, F7, error (0-2); L1 F1, F4, F5, error (3-6); logit 7.
    assert payload["nodes"]["feature"][:7] == [3, 7, -1, 1, 4, 5, -1]
    edges = set(zip(payload["edges"]["source"], payload["edges"]["target"], strict=True))
    assert (0, 5) in edges and (0, 3) in edges and (3, 7) in edges and (5, 7) not in edges
    open_viewer(page, write_html(tmp_path / "hand.html", payload))
    page.evaluate("rrmViewer.setStep(0); rrmViewer.setEdgeBudget(0); rrmViewer.pin(0)")
    page.check("#subgraph")
    assert set(page.evaluate("rrmViewer.drawnList()")) == {0, 3, 7}
    page.uncheck("#subgraph")
    assert 5 in page.evaluate("rrmViewer.drawnList()")  # in the circuit, only not on a path
    open_viewer(page, digits[2])


def test_zoom_and_pan(session, digits):
    page, _ = session
    _, payload, _ = digits
    reset(page)
    a, b = page.evaluate("rrmViewer.drawnList()")[:2]
    pa, pb = (page.evaluate(f"rrmViewer.nodePosition({n})") for n in (a, b))
    page.click("#zoom-in")
    qa, qb = (page.evaluate(f"rrmViewer.nodePosition({n})") for n in (a, b))
    assert qb["x"] - qa["x"] == pytest.approx(1.25 * (pb["x"] - pa["x"]), rel=1e-4)
    # The mouse wheel zooms about the cursor: the point under it stays put (events carry
    # whole pixels, so the cursor is the node's position rounded).
    cursor = {"x": round(qa["x"]), "y": round(qa["y"])}
    page.evaluate("""(at) => document.getElementById('graph').dispatchEvent(new WheelEvent(
        'wheel', {deltaY: -300, clientX: at.x, clientY: at.y, bubbles: true, cancelable: true}))""",
                  cursor)
    factor = page.evaluate("rrmViewer.state.zoom") / 1.25
    assert factor > 1.2
    ra = page.evaluate(f"rrmViewer.nodePosition({a})")
    for key in ("x", "y"):
        assert ra[key] - cursor[key] == pytest.approx((qa[key] - cursor[key]) * factor, abs=0.01)
    # A drag pans by the drag and pins nothing; a click still hits the zoomed node.
    page.mouse.move(ra["x"] + 30, ra["y"] + 30)
    page.mouse.down()
    page.mouse.move(ra["x"] + 90, ra["y"] + 50, steps=4)
    page.mouse.up()
    sa = page.evaluate(f"rrmViewer.nodePosition({a})")
    assert (sa["x"] - ra["x"], sa["y"] - ra["y"]) == pytest.approx((60, 20), abs=0.01)
    assert page.evaluate("rrmViewer.state.pins") == []
    page.mouse.click(sa["x"], sa["y"])
    assert page.evaluate("rrmViewer.state.pins") == [a]


def test_supernode_edges_are_sums_of_its_members(session, digits):
    page, _ = session
    _, payload, _ = digits
    reset(page)
    oracle = Oracle(payload, page.evaluate("rrmViewer.state.step"))
    shown = oracle.shown(40)
    # A layer-1 node and two layer-0 nodes with edges into it: the group has inner edges,
    # which must drop out of the sums.
    top = next(n for n in oracle.ranking if n in shown and payload["nodes"]["kind"][n] == 0
               and payload["nodes"]["layer"][n] == 1)
    feeding = [oracle.src[e] for e in oracle.inn[top] if oracle.ok(e, shown)
               and payload["nodes"]["kind"][oracle.src[e]] == 0]
    members = [top, *feeding[:2]]
    assert len(members) == 3
    for n in members:
        page.evaluate(f"rrmViewer.pin({n})")
    page.fill("#super-name", "<b>loops</b>")
    page.click("#group")
    assert page.evaluate("rrmViewer.state.pins") == []
    expected: dict[tuple, float] = {}
    for e in range(len(oracle.src)):
        s, t = oracle.src[e], oracle.tgt[e]
        if not oracle.ok(e, shown) or (s in members) == (t in members):
            continue
        key = ("S0" if s in members else s, "S0" if t in members else t)
        expected[key] = expected.get(key, 0.0) + oracle.w[e]
    got = {(e["source"], e["target"]): e["weight"]
           for e in page.evaluate("rrmViewer.supernodeEdges()")}
    assert set(got) == set(expected) and expected
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15)  # float64 sums
    # Members leave the drawing; the supernode is one drawn node; its name is text.
    drawn = page.evaluate("rrmViewer.drawnList()")
    assert not set(members) & set(drawn)
    assert page.evaluate("rrmViewer.drawnNodes") == len(drawn) + 1
    assert page.locator("#supers li").first.inner_text().startswith("<b>loops</b> (3 nodes)")
    assert page.locator("#supers b").count() == 0
    page.locator("#supers button").first.click()
    assert set(members) <= set(page.evaluate("rrmViewer.drawnList()"))


def test_warning_banner_is_text(session, digits, tmp_path):
    page, events = session
    _, payload, _ = digits
    assert not page.locator("#warning").is_visible()  # this payload has no warning
    warned = copy.deepcopy(payload)
    warned["warning"] = "zero baselines <b>are not</b> the paper's </script> protocol"
    open_viewer(page, write_html(tmp_path / "warned.html", warned))
    banner = page.locator("#warning")
    assert banner.is_visible() and banner.inner_text() == warned["warning"]
    assert banner.locator("b").count() == 0
    open_viewer(page, digits[2])


def test_positions_without_readouts_say_so(session, digits, tmp_path):
    """`--readouts curve` (the digits fixture's default) measures the budget circuits and the
    circuit shown first: every other position says it has no readout instead of numbers; a
    file with no readouts at all shows dashes (nothing to rerun for)."""
    page, _ = session
    _, payload, _ = digits
    with_runs = [i for i, s in enumerate(payload["steps"]) if "runs" in s]
    without = [i for i, s in enumerate(payload["steps"]) if "runs" not in s
               and s["mode"] == "influence"]
    assert payload["default_step"] in with_runs and without
    message = "no readout for this position: rerun with `rrm trace --readouts all`"
    default = payload["steps"][payload["default_step"]]["runs"]
    shown = float(page.locator("#stat-insertion").inner_text())
    assert shown == pytest.approx(default["insertion"]["adjusted_logit"], abs=5e-4)
    page.evaluate(f"rrmViewer.setStep({without[0]})")
    assert page.locator("#stat-no-readout").inner_text() == message
    assert page.locator("#stat-insertion").count() == 0
    # The budget curve is unaffected: all its points are measured.
    budget = [i for i, s in enumerate(payload["steps"]) if s["mode"] == "budget"]
    assert len(page.evaluate("rrmViewer.curvePoints()")) == len(budget) and \
        set(budget) <= set(with_runs)
    page.evaluate("rrmViewer.setStep(rrmViewer.data.default_step)")
    assert page.locator("#stat-no-readout").count() == 0
    bare = copy.deepcopy(payload)
    for step in bare["steps"]:
        step.pop("runs", None)
    open_viewer(page, write_html(tmp_path / "bare.html", bare))
    page.evaluate(f"rrmViewer.setStep({without[0]})")
    assert page.locator("#stat-no-readout").count() == 0
    assert page.locator("#stat-insertion").inner_text() == "–"
    open_viewer(page, digits[2])


def test_no_console_errors(session):
    _, events = session
    assert events["errors"] == [] and events["failed"] == []
    assert [c for c in events["console"] if c[0] in ("error", "warning")] == []
