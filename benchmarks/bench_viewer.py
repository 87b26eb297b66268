"""Circuit viewer on a ViT-B/16-sized graph: build time, file size, browser render times.

Setting: the randomly initialised ViT-B/16-shaped HookedViT with random TopK SAEs of the paper's
sizes of `bench_attribution.py` (same seeds), one random image, feature granularity; the page
is loaded from disk in Debian's headless Chromium through Playwright (3 fresh loads). In the same
run it times the page at the default threshold (node 0.8, edge 0.98) against the reference of
drawing the whole graph (node and edge thresholds 1.0), and a hover. It also writes the
screenshots `docs/viewer_vit_b16.png` and `docs/viewer_digits.png` (the embedded digits model).

    python benchmarks/bench_viewer.py [--threads 2] [--out benchmarks/viewer_results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_attribution import setup  # noqa: E402

from tests.viewer.browser import browser_page, open_viewer, unavailable_reason  # noqa: E402

HOVER_JS = """(n) => {
  const at = rrmViewer.nodePosition(n), c = document.getElementById('graph');
  const t = performance.now();
  c.dispatchEvent(new MouseEvent('mousemove', {clientX: at.x, clientY: at.y, bubbles: true}));
  return performance.now() - t; }"""


def strongest(page, payload) -> int:
    drawn = page.evaluate("rrmViewer.drawnList()")
    features = [n for n in drawn if payload["nodes"]["kind"][n] == 0]
    return max(features, key=lambda n: abs(payload["nodes"]["score"][n]))


def measure(path: Path, payload: dict, repeats: int = 3) -> dict:
    loads = []
    for _ in range(repeats):
        with browser_page(width=1400, height=1000) as (page, events):
            start = time.perf_counter()
            open_viewer(page, path)
            wall = time.perf_counter() - start
            ready = page.evaluate("rrmViewer.loadedMs")
            first = page.evaluate("rrmViewer.firstRenderMs")
            default_draw = page.evaluate("rrmViewer.renderMs[0]")
            drawn_default = page.evaluate("rrmViewer.drawnNodes")
            hover = page.evaluate(HOVER_JS, strongest(page, payload))
            page.locator("#node-slider").focus()
            page.keyboard.press("End")
            page.locator("#edge-slider").focus()
            page.keyboard.press("End")
            all_draw = page.evaluate("rrmViewer.renderMs[rrmViewer.renderMs.length - 1]")
            drawn_all = page.evaluate("[rrmViewer.drawnNodes, rrmViewer.drawnEdges]")
            hover_all = page.evaluate(HOVER_JS, strongest(page, payload))
            assert not events["errors"] and not events["failed"], events
            loads.append({"wall_s": wall, "ready_ms": ready, "script_ms": first,
                          "draw_default_ms": default_draw, "drawn_default": drawn_default,
                          "hover_default_ms": hover, "draw_all_ms": all_draw,
                          "drawn_all_nodes": drawn_all[0], "drawn_all_edges": drawn_all[1],
                          "hover_all_ms": hover_all})
    return {"loads": loads}


def screenshot(path: Path, payload: dict, out: Path) -> None:
    with browser_page(width=1400, height=1000) as (page, _):
        open_viewer(page, path)
        node = strongest(page, payload)
        at = page.evaluate(f"rrmViewer.nodePosition({node})")
        page.mouse.click(at["x"], at["y"])
        page.mouse.move(at["x"], at["y"])
        page.screenshot(path=str(out), full_page=True)


def digits_page(out_dir: Path) -> tuple[Path, dict]:
    import rrm_plugin
    from rrm_plugin.attribution import attribute
    from rrm_plugin.viewer.build import build_viewer, write_viewer
    from rrm_plugin.zoo.baselines import load_release_baselines

    model = rrm_plugin.load_model("digits-vit")
    saes = rrm_plugin.load_saes("rrm-digits-vit")
    baselines = load_release_baselines("rrm-digits-vit", saes)
    image = rrm_plugin.load_test_set("digits-vit").images[5]
    graph = attribute(model, saes, image[None], baselines=baselines)[0]
    payload = build_viewer(graph, model=model, saes=saes, image=image, baselines=baselines,
                           title="digits-vit: held-out image 5")
    return write_viewer(out_dir, payload), payload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "viewer_results.json")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"no browser: {reason}")
    from rrm_plugin.attribution.build import attribute
    from rrm_plugin.viewer.build import build_viewer, write_viewer
    from rrm_plugin.viewer.steps import influence_steps, paper_steps

    model, saes, baselines, image = setup(args.threads)
    t0 = time.perf_counter()
    graph = attribute(model, saes, image, baselines=baselines)[0]
    t1 = time.perf_counter()
    steps = influence_steps(graph) + paper_steps(graph)  # timed alone: the pruning part
    t2 = time.perf_counter()
    payload = build_viewer(graph, model=model, saes=saes, image=image[0], baselines=baselines,
                           title="ViT-B/16-shaped random model, random paper-size SAEs")
    t3 = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="rrm-viewer-bench-"))
    page = write_viewer(out, payload)
    n_nodes = sum(len(layer) for layer in graph.layers) + len(graph.layers) + 1
    n_edges = int(sum(int((e != 0).sum()) for e in graph.edges))
    result = {
        "graph_nodes": n_nodes, "graph_edges": n_edges, "embedded_edges":
        len(payload["edges"]["source"]), "steps": len(steps),
        "attribute_s": t1 - t0, "pruning_steps_s": t2 - t1, "build_viewer_s": t3 - t2,
        "html_bytes": page.stat().st_size, "torch": torch.__version__,
        "browser": measure(page, payload),
    }
    docs = ROOT / "docs"
    screenshot(page, payload, docs / "viewer_vit_b16.png")
    digits, digits_payload = digits_page(out / "digits")
    result["digits"] = {"html_bytes": digits.stat().st_size,
                        "graph_nodes": len(digits_payload["nodes"]["kind"]),
                        "browser": measure(digits, digits_payload, repeats=1)}
    screenshot(digits, digits_payload, docs / "viewer_digits.png")
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    def summary(name: str, res: dict) -> None:
        loads = res["browser"]["loads"]
        span = lambda key: f"{min(x[key] for x in loads):.0f}-{max(x[key] for x in loads):.0f}"  # noqa: E731
        print(f"{name}: page ready {span('ready_ms')} ms after navigation start (script "
              f"{span('script_ms')} ms); default threshold: {loads[0]['drawn_default']} nodes "
              f"drawn in {span('draw_default_ms')} ms, hover {span('hover_default_ms')} ms; "
              f"reference, whole graph (thresholds 1.0): {loads[0]['drawn_all_nodes']} nodes, "
              f"{loads[0]['drawn_all_edges']} edges drawn in {span('draw_all_ms')} ms, hover "
              f"{span('hover_all_ms')} ms")

    print(f"ViT-B/16-shaped graph: {n_nodes} nodes, {n_edges} non-zero edges "
          f"({result['embedded_edges']} strongest embedded), {result['steps']} slider steps; "
          f"attribute {t1 - t0:.1f} s, pruning steps {t2 - t1:.1f} s, build_viewer "
          f"(steps + image context + insertion/deletion per step) {t3 - t2:.1f} s; "
          f"circuit.html {result['html_bytes'] / 2**20:.1f} MiB")
    summary("ViT-B/16-shaped", result)
    summary("digits-vit", result["digits"])


if __name__ == "__main__":
    main()
