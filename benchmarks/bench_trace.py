"""`rrm trace` end to end vs its attribution graph alone, for two copies of the code in one run.

Issue 27 item 6: the trace (graph, influence pruning, the circuit's runs, figure inputs, the
viewer's slider circuits and their insertion / deletion readouts, the files) should cost at most
2x the graph alone. Each copy of the package (`--old ROOT`, e.g. a detached copy of main, and this
worktree) runs in its own process on the same models and image, one after the other:

- `vit-b16`: the ViT-B/16-shaped random HookedViT with random TopK SAEs of the paper's sizes of
  `bench_attribution.py` (same seeds), one random 224 px image, feature granularity;
- `digits`: the embedded `digits-vit` with `rrm-digits-vit` and its shipped baselines, held-out
  image 0.

Timed: `attribute` alone (the graph), then `trace(...)` + `TraceResult.write` into a temporary
folder (what `rrm trace` runs after loading the model), each copy with its default readouts.
Prints seconds, the ratios, whether both copies found the same circuit and slider circuits, and
the largest readout difference on the steps both measured and in the summary.

    python benchmarks/bench_trace.py --old /tmp/orig27d [--threads 2] [--models vit-b16 digits]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(root: Path, model_name: str, threads: int) -> dict:
    """Time graph and trace with the package at `root` (imported from there only)."""
    sys.path[:0] = [str(root), str(root / "benchmarks")]
    import torch

    import rrm_plugin
    from rrm_plugin.attribution.build import attribute
    from rrm_plugin.workflows.trace import trace

    assert Path(rrm_plugin.__file__).resolve().is_relative_to(root.resolve()), rrm_plugin.__file__
    torch.set_num_threads(threads)
    if model_name == "vit-b16":
        from bench_attribution import setup

        model, saes, baselines, image = setup(threads)
        image = image[0]
    else:
        from rrm_plugin.zoo.baselines import load_release_baselines

        model = rrm_plugin.load_model("digits-vit")
        saes = rrm_plugin.load_saes("rrm-digits-vit", model=model)
        image = rrm_plugin.load_test_set("digits-vit").images[0]
        baselines = load_release_baselines("rrm-digits-vit")
    start = time.perf_counter()
    graph = attribute(model, saes, image[None], baselines=baselines)[0]
    graph_s = time.perf_counter() - start
    start = time.perf_counter()
    result = trace(model, saes, image, baselines=baselines)
    with tempfile.TemporaryDirectory() as out:
        result.write(out)
    trace_s = time.perf_counter() - start
    steps = result.viewer["steps"]
    return {"graph_s": round(graph_s, 2), "trace_s": round(trace_s, 2),
            "graph_nodes": sum(len(layer) for layer in graph.layers),
            "circuit_nodes": result.circuit.node_count, "viewer_steps": len(steps),
            "readouts": {k: result.readouts[k] for k in ("insertion", "deletion",
                                                         "all_at_baseline")},
            "step_nodes": [s["nodes"] for s in steps],
            "step_runs": [s.get("runs") for s in steps]}


def run_worker(root: Path, model_name: str, threads: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", str(root), "--models",
                           model_name, "--threads", str(threads)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"worker {root} {model_name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


KEYS = ("logit", "adjusted_logit", "probability")


def max_readout_gap(old: list, new: list) -> float:
    """Largest difference of a step's readout between the two copies, over the steps both
    measured (the new default, `readouts="curve"`, measures the budget curve and the default)."""
    gap = 0.0
    for a, b in zip(old, new, strict=True):
        if a is None or b is None:
            continue
        for mode in ("insertion", "deletion"):
            for key in KEYS:
                gap = max(gap, abs(a[mode][key] - b[mode][key]))
    return gap


def summary_gap(old: dict, new: dict) -> float:
    """Largest difference of the summary's insertion / deletion / all-at-baseline readouts."""
    return max(abs(old[m][k] - new[m][k]) for m in old for k in KEYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="root of the reference copy (e.g. main)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["vit-b16", "digits"],
                        choices=["vit-b16", "digits"])
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.models[0], args.threads)))
        return
    if args.old is None:
        parser.error("--old ROOT is required")
    rows = {}
    for name in args.models:
        old = run_worker(args.old, name, args.threads)
        new = run_worker(ROOT, name, args.threads)
        rows[name] = {
            "graph_nodes": new["graph_nodes"], "viewer_steps": new["viewer_steps"],
            "old": {k: old[k] for k in ("graph_s", "trace_s")},
            "new": {k: new[k] for k in ("graph_s", "trace_s")},
            "old_trace_over_graph": round(old["trace_s"] / old["graph_s"], 2),
            "new_trace_over_graph": round(new["trace_s"] / new["graph_s"], 2),
            "trace_speedup": round(old["trace_s"] / new["trace_s"], 2),
            "same_circuit": old["circuit_nodes"] == new["circuit_nodes"],
            "same_slider_circuits": old["step_nodes"] == new["step_nodes"],
            "steps_measured": {"old": sum(r is not None for r in old["step_runs"]),
                               "new": sum(r is not None for r in new["step_runs"])},
            "max_step_readout_gap": max_readout_gap(old["step_runs"], new["step_runs"]),
            "max_summary_readout_gap": summary_gap(old["readouts"], new["readouts"]),
        }
    print(json.dumps({"threads": args.threads, **rows}, indent=1))


if __name__ == "__main__":
    main()
