"""Circuit viewer at ViT-B/16 scale and on digits: this page against the page before issue 27.

Setting: the randomly initialised ViT-B/16-shaped HookedViT with random TopK SAEs of the paper's
sizes of `bench_attribution.py` (same seeds), one random image, feature granularity. Both pages
are built in this run from the same graph and the same slider circuits: today's page by the
code of `--reference-tree` (a `git archive` of the commit before issue 27) in a subprocess, this
page in-process. The ViT-B pages are built from the graph alone (no image, heat maps or
insertion / deletion readouts, in both: the per-step readouts of ViT-B/16 take tens of minutes
on 2 cores); the digits pages (embedded model, held-out image 5) with the model, in both.

Each page is opened from disk in Debian's headless Chromium through Playwright (fresh profile,
`--repeats` loads, alternating old and new), and the script reads the page's own clock:
`ready_ms` (navigation start to the end of the script, first draw included: interactive),
`draw_ms` (the first draw), the redraw after the node slider moves one step, after the node
budget moves one step (new page) and with both sliders at 1.0.

    python benchmarks/bench_viewer.py --reference-tree /tmp/orig27p [--graph /tmp/vitb_graph]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from tests.viewer.browser import browser_page, open_viewer, unavailable_reason  # noqa: E402

LAST = "rrmViewer.renderMs[rrmViewer.renderMs.length - 1]"

# Run by the reference tree's interpreter path: its own viewer_payload and write_viewer.
OLD_PAGE = """
import pickle, sys
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.viewer.build import build_viewer, write_viewer
from rrm_plugin.viewer.payload import viewer_payload
graph_stem, steps_path, out, title, tree = sys.argv[1:6]
import rrm_plugin
assert rrm_plugin.__file__.startswith(tree), rrm_plugin.__file__  # the reference code
graph = Graph.load(graph_stem)
with open(steps_path, "rb") as f:
    steps = pickle.load(f)
if steps is None:  # digits: the whole old build, with the model
    import rrm_plugin
    from rrm_plugin.zoo.baselines import load_release_baselines
    model = rrm_plugin.load_model("digits-vit")
    saes = rrm_plugin.load_saes("rrm-digits-vit")
    baselines = load_release_baselines("rrm-digits-vit", saes)
    image = rrm_plugin.load_test_set("digits-vit").images[5]
    payload = build_viewer(graph, model=model, saes=saes, image=image, baselines=baselines,
                           title=title)
else:
    payload = viewer_payload(graph, steps, title=title)
print(write_viewer(out, payload))
"""


def old_page(tree: Path, graph_stem: Path, steps, out: Path, title: str) -> Path:
    """Today's page of the same graph and circuits, by the reference tree's code."""
    steps_path = out / "steps.pkl"
    out.mkdir(parents=True, exist_ok=True)
    with open(steps_path, "wb") as f:
        pickle.dump(steps, f)
    # cwd: `python -c` puts the working directory first on sys.path.
    done = subprocess.run([sys.executable, "-c", OLD_PAGE, str(graph_stem), str(steps_path),
                           str(out), title, str(tree.resolve())],
                          env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"reference page failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def measure_once(path: Path, *, new: bool) -> dict:
    with browser_page(width=1400, height=1000) as (page, events):
        open_viewer(page, path)
        out = {"ready_ms": page.evaluate("rrmViewer.loadedMs"),
               "draw_ms": page.evaluate("rrmViewer.renderMs[0]"),
               "drawn_nodes": page.evaluate("rrmViewer.drawnNodes"),
               "drawn_edges": page.evaluate("rrmViewer.drawnEdges")}
        page.locator("#node-slider").focus()
        page.keyboard.press("ArrowLeft")
        out["slider_redraw_ms"] = page.evaluate(LAST)
        if new:
            page.locator("#budget-slider").focus()
            page.keyboard.press("ArrowRight")
            out["budget_redraw_ms"] = page.evaluate(LAST)
            out["budget_after"] = page.evaluate("rrmViewer.state.budget")
            page.keyboard.press("ArrowLeft")
        page.locator("#node-slider").focus()
        page.keyboard.press("End")
        page.locator("#edge-slider").focus()
        page.keyboard.press("End")
        out["whole_graph_redraw_ms"] = page.evaluate(LAST)
        out["whole_graph_drawn"] = page.evaluate("[rrmViewer.drawnNodes, rrmViewer.drawnEdges]")
        if new:
            # The largest view the page offers: every node, every embedded edge.
            page.evaluate("rrmViewer.setEdgeBudget(0)")
            page.evaluate("rrmViewer.setBudget(1e9)")
            out["everything_redraw_ms"] = page.evaluate(LAST)
            out["everything_drawn"] = page.evaluate(
                "[rrmViewer.drawnNodes, rrmViewer.drawnEdges]")
        bad = [c for c in events["console"] if c[0] in ("error", "warning")]
        assert not events["errors"] and not events["failed"] and not bad, events
    return out


def compare(old: Path, new: Path, repeats: int) -> dict:
    result = {"old": {"html_bytes": old.stat().st_size, "loads": []},
              "new": {"html_bytes": new.stat().st_size, "loads": []}}
    for _ in range(repeats):
        result["old"]["loads"].append(measure_once(old, new=False))
        result["new"]["loads"].append(measure_once(new, new=True))
    return result


def screenshot(path: Path, out: Path) -> None:
    with browser_page(width=1400, height=1000) as (page, _):
        open_viewer(page, path)
        drawn = page.evaluate("rrmViewer.drawnList()")
        kind = page.evaluate("rrmViewer.data.nodes.kind")
        node = next(n for n in drawn if kind[n] == 0)
        at = page.evaluate(f"rrmViewer.nodePosition({node})")
        page.mouse.click(at["x"], at["y"])
        page.mouse.move(at["x"], at["y"])
        page.screenshot(path=str(out), full_page=True)


def vit_b_graph(stem: Path | None, threads: int):
    """The ViT-B/16-shaped graph (saved to / loaded from `stem` when given)."""
    from rrm_plugin.attribution.build import attribute
    from rrm_plugin.attribution.graph import Graph

    if stem is not None and Path(f"{stem}.json").is_file():
        return Graph.load(stem), None
    from bench_attribution import setup

    model, saes, baselines, image = setup(threads)
    start = time.perf_counter()
    graph = attribute(model, saes, image, baselines=baselines)[0]
    seconds = time.perf_counter() - start
    if stem is not None:
        graph.save(stem)
    return graph, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-tree", type=Path, required=True,
                        help="the code before issue 27 (git archive of its commit)")
    parser.add_argument("--graph", type=Path, default=None,
                        help="save the ViT-B graph here, or reuse it when it exists")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" /
                        "results_viewer.json")
    parser.add_argument("--screenshots", action="store_true")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"no browser: {reason}")
    from rrm_plugin.attribution.graph import Graph
    from rrm_plugin.viewer.build import write_viewer
    from rrm_plugin.viewer.payload import viewer_payload
    from rrm_plugin.viewer.steps import budget_steps, influence_steps, paper_steps

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="rrm-viewer-bench-"))
    graph, attribute_s = vit_b_graph(args.graph, args.threads)
    stem = args.graph or tmp / "vitb_graph"
    if args.graph is None:
        graph.save(stem)
    t0 = time.perf_counter()
    cached = Path(f"{stem}.steps.pkl")
    if args.graph is not None and cached.is_file():  # the slider circuits of that graph
        with open(cached, "rb") as f:
            steps = pickle.load(f)
    else:
        steps = influence_steps(graph) + paper_steps(graph)
        if args.graph is not None:  # for reruns: the pruning is the slow part on a CPU
            with open(cached, "wb") as f:
                pickle.dump(steps, f)
    t1 = time.perf_counter()
    extra = budget_steps(graph)
    title = "ViT-B/16-shaped random model, random paper-size SAEs (graph only)"
    new = write_viewer(tmp / "new", viewer_payload(graph, steps + extra, title=title))
    t2 = time.perf_counter()
    # The reference gets the budget circuits too when it knows them (main since issue 27).
    has_budget = (args.reference_tree / "rrm_plugin" / "viewer" / "steps.py").read_text().count(
        "def budget_steps") > 0
    old = old_page(args.reference_tree, stem, steps + extra if has_budget else steps,
                   tmp / "old", title)
    n_nodes = sum(len(layer) for layer in graph.layers) + len(graph.layers) + 1
    n_edges = int(sum(int((e != 0).sum()) for e in graph.edges)) + int(
        (graph.logit_edges != 0).sum())
    result = {"graph_nodes": n_nodes, "graph_edges": n_edges, "slider_steps": len(steps),
              "budget_steps": len(extra), "attribute_s": attribute_s,
              "pruning_steps_s": t1 - t0, "new_payload_s": t2 - t1, "torch": torch.__version__,
              "vit_b16": compare(old, new, args.repeats)}

    # digits: both builds with the model (image, heat maps, readouts of every circuit).
    import rrm_plugin
    from rrm_plugin.attribution import attribute
    from rrm_plugin.viewer.build import build_viewer
    from rrm_plugin.zoo.baselines import load_release_baselines

    model = rrm_plugin.load_model("digits-vit")
    saes = rrm_plugin.load_saes("rrm-digits-vit")
    baselines = load_release_baselines("rrm-digits-vit", saes)
    image = rrm_plugin.load_test_set("digits-vit").images[5]
    digits = attribute(model, saes, image[None], baselines=baselines)[0]
    digits.save(tmp / "digits_graph")
    title = "digits-vit: held-out image 5"
    new_d = write_viewer(tmp / "digits_new", build_viewer(
        digits, model=model, saes=saes, image=image, baselines=baselines, title=title))
    old_d = old_page(args.reference_tree, tmp / "digits_graph", None, tmp / "digits_old",
                     title)
    assert Graph.load(tmp / "digits_graph").value == digits.value
    result["digits"] = compare(old_d, new_d, args.repeats)
    if args.screenshots:
        screenshot(new, ROOT / "docs" / "viewer_vit_b16.png")
        screenshot(new_d, ROOT / "docs" / "viewer_digits.png")
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    def span(loads: list[dict], key: str) -> str:
        values = [x[key] for x in loads]
        return f"{min(values):.0f}-{max(values):.0f}"

    print(f"ViT-B/16-shaped graph: {n_nodes} nodes, {n_edges} non-zero edges, "
          f"{len(steps)} slider circuits + {len(extra)} budget circuits; attribute "
          f"{attribute_s if attribute_s is None else round(attribute_s, 1)} s, pruning steps "
          f"{t1 - t0:.1f} s")
    for name in ("vit_b16", "digits"):
        for which in ("old", "new"):
            res = result[name][which]
            loads = res["loads"]
            line = (f"{name} {which}: {res['html_bytes'] / 2**20:.2f} MiB; interactive "
                    f"{span(loads, 'ready_ms')} ms (first draw {span(loads, 'draw_ms')} ms, "
                    f"{loads[0]['drawn_nodes']} nodes / {loads[0]['drawn_edges']} edges); "
                    f"node slider redraw {span(loads, 'slider_redraw_ms')} ms; sliders at 1.0 "
                    f"{span(loads, 'whole_graph_redraw_ms')} ms "
                    f"({loads[0]['whole_graph_drawn'][0]} nodes / "
                    f"{loads[0]['whole_graph_drawn'][1]} edges)")
            if which == "new":
                line += (f"; budget redraw {span(loads, 'budget_redraw_ms')} ms; every node and "
                         f"embedded edge {span(loads, 'everything_redraw_ms')} ms "
                         f"({loads[0]['everything_drawn'][0]} nodes / "
                         f"{loads[0]['everything_drawn'][1]} edges)")
            print(line)
        old_ready = min(x["ready_ms"] for x in result[name]["old"]["loads"])
        new_ready = min(x["ready_ms"] for x in result[name]["new"]["loads"])
        print(f"{name}: interactive time new / old = {new_ready / old_ready:.2f}")


if __name__ == "__main__":
    main()
