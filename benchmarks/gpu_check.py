"""The first-GPU check: every CUDA path once, each result compared with the CPU's.

    python benchmarks/gpu_check.py --device cuda --out gpu_check   # on a GPU machine (< 10 min)
    python benchmarks/gpu_check.py --device cpu --quick --out DIR  # the same steps, small, on CPU

Steps (each a subprocess; its command, exit status, seconds and output tail go into the JSON):

1. `cuda_tests`: `pytest -m cuda tests/cuda` (they skip without CUDA).
2. `attribution`: `bench_attribution.py` on `--device` (full graph, the circuit-tracer-style
   comparison, the forward-pass overhead) and on the CPU (full graph only); graphs compared with
   `gpu_compare.compare_graph_files`, and the device's circuit-tracer-style edges must match ours
   within `GRAPH_RTOL` there too.
3. `trace`: `rrm trace` on `--device` and on the CPU, graphs compared. Full mode: the
   ViT-B/16 offline fixture of the tests (`tests/hubcache.py`: a random timm ViT-B/16 and
   paper-size authors' SAEs in a hub cache under OUT, `HF_HUB_OFFLINE=1`). Quick: `digits-vit`.
4. `faithfulness`: `rrm faithfulness` (methods rrm, random) over 8 photo crops (quick: 2 random
   digit-sized images) on `--device` and the CPU, images/s
   of each (wall time of the command, start-up and model loading included), per-image curves
   compared (`compare_curve_files`).
5. `torchrun`: `torchrun --nproc-per-node 2` of the same faithfulness run, compared with the
   one-process run on the same device. Needs two CUDA devices (NCCL refuses two ranks on one
   GPU); on one GPU it is skipped with that reason; on the CPU it runs with gloo.

Writes OUT/gpu_check.json and OUT/summary.txt; exits 1 if a step failed or a comparison is
outside its tolerance (`gpu_compare.py` states and justifies them), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from gpu_compare import (  # noqa: E402
    CURVE_ATOL,
    GRAPH_RTOL,
    compare_curve_files,
    compare_graph_files,
)

VIT_B = ["--model", "vit-b16-imagenet", "--release", "rrm-vit-b16-imagenet"]


class Runner:
    """Runs the steps' commands with one environment and records them."""

    def __init__(self, out: Path, env: dict[str, str], timeout: float) -> None:
        self.out, self.env, self.timeout = out, env, timeout

    def __call__(self, argv: list[str]) -> dict:
        t0 = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=self.timeout)
            rc, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as e:
            rc, stdout, stderr = 124, str(e.stdout or ""), f"timed out after {self.timeout} s"
        return {"argv": argv, "returncode": rc, "seconds": time.perf_counter() - t0,
                "stdout_tail": stdout[-2000:], "stderr_tail": stderr[-2000:]}


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def rrm(*args: str) -> list[str]:
    return python("-m", "rrm_plugin.cli.main", *args)


def write_photos(folder: Path, n: int) -> Path:
    """`n` RGB photos: crops of scikit-learn's two sample images (shipped, offline)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    photos = load_sample_images().images
    for i in range(n):
        array = photos[i % 2]
        top, left = 20 * (i // 2), 30 * (i // 2)
        Image.fromarray(array[top:top + 380, left:left + 380]).save(folder / f"photo_{i:02d}.jpg")
    return folder


def write_digit_sized_images(folder: Path, n: int, size: int = 24) -> Path:
    """`n` seeded random RGB images of `digits-vit`'s size (quick mode: no held-out set scan)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def build_vit_b16_hub(cache: Path) -> None:
    """The tests' offline fixture: random timm ViT-B/16 + paper-size authors' SAEs."""
    from tests.hubcache import add_authors_saes, add_timm_vit_b16

    cache.mkdir(parents=True, exist_ok=True)
    add_timm_vit_b16(cache)
    add_authors_saes(cache, release="rrm-vit-b16-imagenet")


def step_failed(*runs: dict) -> str | None:
    bad = [r for r in runs if r["returncode"] != 0]
    if not bad:
        return None
    r = bad[0]
    return f"exit {r['returncode']}: {' '.join(r['argv'][1:4])} ... {r['stderr_tail'][-600:]}"


def cuda_tests(run: Runner, args) -> dict:
    r = run(python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/cuda"))
    last = (r["stdout_tail"].strip().splitlines() or [""])[-1]
    return {"ok": r["returncode"] == 0, "summary": last, "runs": [r],
            "error": step_failed(r)}


def attribution(run: Runner, args) -> dict:
    out = args.out / "attribution"
    size = ["--shape", "tiny", "--image-size", "32"] if args.quick else ["--image-size", "224"]
    common = ["benchmarks/bench_attribution.py", *size, "--skip-reference",
              "--threads", str(args.threads)]
    quick = ["--skip-forward"] if args.quick else []
    dev = run(python(*common, *quick, "--device", args.device,
                     "--graph-out", str(out / "device" / "graph"),
                     "--out", str(out / "device.json")))
    runs = [dev]
    cpu_dir = out / "device"  # with --device cpu the device run is the CPU run
    if args.device != "cpu":
        cpu_dir = out / "cpu"
        runs.append(run(python(*common, "--device", "cpu", "--skip-circuit-tracer",
                               "--skip-forward", "--graph-out", str(cpu_dir / "graph"),
                               "--out", str(cpu_dir.with_suffix(".json")))))
    result = {"runs": runs, "error": step_failed(*runs)}
    if result["error"]:
        return {**result, "ok": False}
    report = json.loads((out / "device.json").read_text())
    graphs = compare_graph_files(cpu_dir / "graph", out / "device" / "graph")
    ct = max(report["circuit_tracer_max_rel_diff"].values())
    problems = list(graphs.problems)
    if not ct <= GRAPH_RTOL:
        problems.append(f"circuit-tracer-style edges on {args.device} differ from ours by "
                        f"{ct:.2e} > {GRAPH_RTOL:.0e}")
    return {**result, "ok": not problems, "problems": problems,
            "graph_vs_cpu": graphs.as_dict(), "circuit_tracer_max_rel_diff": ct,
            "full_graph_seconds": report["ours_full"]["seconds"],
            "full_graph_peak_bytes": report["ours_full"]["peak_bytes"],
            "cpu_full_graph_seconds": json.loads(cpu_dir.with_suffix(".json").read_text())[
                "ours_full"]["seconds"],
            "circuit_tracer_speedup": report.get("circuit_tracer_speedup"),
            "forward": report.get("forward"), "report": report}


def model_args(args) -> list[str]:
    return [] if args.quick else VIT_B


def trace(run: Runner, args) -> dict:
    out = args.out / "trace"
    image = "0" if args.quick else str(args.photos / "photo_00.jpg")
    runs = {d: run(rrm("trace", image, *model_args(args), "--device", d, "--no-viewer",
                       "--out", str(out / d.replace(":", "_"))))
            for d in dict.fromkeys([args.device, "cpu"])}
    dev_dir, cpu_dir = out / args.device.replace(":", "_"), out / "cpu"
    result = {"runs": list(runs.values()), "error": step_failed(*runs.values())}
    if result["error"]:
        return {**result, "ok": False}
    graphs = compare_graph_files(cpu_dir / "graph.lossless", dev_dir / "graph.lossless")
    dev_summary = json.loads((dev_dir / "summary.json").read_text())
    cpu_summary = json.loads((cpu_dir / "summary.json").read_text())
    problems = list(graphs.problems)
    if dev_summary["circuit_nodes"] != cpu_summary["circuit_nodes"]:
        problems.append(f"circuit of {dev_summary['circuit_nodes']} nodes vs "
                        f"{cpu_summary['circuit_nodes']} on the CPU")
    return {**result, "ok": not problems, "problems": problems, "graph_vs_cpu": graphs.as_dict(),
            "seconds": {d: r["seconds"] for d, r in runs.items()},
            "graph_nodes": dev_summary["graph_nodes"]}


def faithfulness_argv(args, device: str, out: Path) -> list[str]:
    # Unlabelled images: predicted classes stand in for labels, so every image is used.
    return ["faithfulness", *model_args(args), "--images", str(args.photos), "--methods",
            "rrm", "random",
            "--batch-size", str(args.batch_size), "--device", device, "--out", str(out),
            "--chunks", str(out.parent / f"chunks_{out.name}")]


def faithfulness(run: Runner, args) -> dict:
    out = args.out / "faithfulness"
    runs = {d: run(rrm(*faithfulness_argv(args, d, out / d.replace(":", "_"))))
            for d in dict.fromkeys([args.device, "cpu"])}
    result = {"runs": list(runs.values()), "error": step_failed(*runs.values())}
    if result["error"]:
        return {**result, "ok": False}
    dev_json = out / args.device.replace(":", "_") / "faithfulness.json"
    n = json.loads(dev_json.read_text())["n_images"]
    curves = compare_curve_files(out / "cpu" / "faithfulness.json", dev_json)
    return {**result, "ok": curves.ok, "problems": curves.problems,
            "curves_vs_cpu": curves.as_dict(), "n_images": n,
            "images_per_s": {d: n / r["seconds"] for d, r in runs.items()}}


def torchrun_plan(device: str, n_cuda: int) -> str | None:
    """Why the 2-process run is skipped on this machine, or None when it runs."""
    if device.startswith("cuda") and n_cuda < 2:
        return (f"{n_cuda} CUDA device(s): NCCL refuses two ranks on one GPU, and a rank per "
                "device needs two; the sharding itself is checked on the CPU with gloo "
                "(tests/runs/test_runs.py and this script's --device cpu mode)")
    return None


def torchrun(run: Runner, args) -> dict:
    import torch

    reason = torchrun_plan(args.device, torch.cuda.device_count())
    if reason:
        return {"ok": True, "skipped": reason, "runs": []}
    out = args.out / "torchrun"
    two = run(python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     "-m", "rrm_plugin.cli.main",
                     *faithfulness_argv(args, args.device.split(":")[0], out / "two")))
    result = {"runs": [two], "error": step_failed(two)}
    if result["error"]:
        return {**result, "ok": False}
    one = args.out / "faithfulness" / args.device.replace(":", "_") / "faithfulness.json"
    curves = compare_curve_files(one, out / "two" / "faithfulness.json")
    return {**result, "ok": curves.ok, "problems": curves.problems,
            "curves_vs_one_process": curves.as_dict(), "seconds": two["seconds"]}


STEPS = {"cuda_tests": cuda_tests, "attribution": attribution, "trace": trace,
         "faithfulness": faithfulness, "torchrun": torchrun}


def summary_lines(report: dict) -> list[str]:
    env = report["environment"]
    lines = [f"gpu_check on {env['device']} ({env['device_name']}), torch {env['torch']}, "
             f"CUDA {env['cuda']}, quick={report['quick']}: "
             f"{'PASS' if report['ok'] else 'FAIL'} in {report['seconds']:.0f} s",
             f"tolerances: graphs {GRAPH_RTOL:.0e} relative, curves {CURVE_ATOL:.0e} scaled "
             "(benchmarks/gpu_compare.py)"]
    for name, step in report["steps"].items():
        status = "skipped" if step.get("skipped") else ("ok" if step["ok"] else "FAILED")
        line = f"- {name}: {status}"
        if step.get("skipped"):
            line += f" ({step['skipped']})"
        elif name == "cuda_tests":
            line += f" ({step['summary']})"
        elif name == "attribution" and not step.get("error"):
            line += (f"; full graph {step['full_graph_seconds']:.3f} s on the device vs "
                     f"{step['cpu_full_graph_seconds']:.3f} s on the CPU, peak "
                     f"{step['full_graph_peak_bytes'] / 2**30:.2f} GiB; vs CPU worst "
                     f"{step['graph_vs_cpu']['worst']:.1e}; circuit-tracer-style edges "
                     f"{step['circuit_tracer_max_rel_diff']:.1e}")
        elif name == "trace" and not step.get("error"):
            line += (f"; {step['graph_nodes']} graph nodes; vs CPU worst "
                     f"{step['graph_vs_cpu']['worst']:.1e}; seconds " +
                     ", ".join(f"{d} {s:.1f}" for d, s in step["seconds"].items()))
        elif name == "faithfulness" and not step.get("error"):
            line += (f"; {step['n_images']} images; images/s " +
                     ", ".join(f"{d} {v:.3f}" for d, v in step["images_per_s"].items()) +
                     f"; curves vs CPU worst {step['curves_vs_cpu']['worst']:.1e}")
        elif name == "torchrun" and not step.get("error"):
            line += f"; vs one process worst {step['curves_vs_one_process']['worst']:.1e}"
        lines.append(line)
        for problem in ([step["error"]] if step.get("error") else []) + step.get("problems", []):
            lines.append(f"    {problem}")
    return lines


def environment(device: str) -> dict:
    import platform

    import torch

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "device_name": torch.cuda.get_device_name(torch.device(device).index or 0)
            if cuda else (platform.processor() or platform.machine()),
            "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (digits-vit, a 4-block model): the CPU smoke run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--n-images", type=int, default=None,
                        help="faithfulness images (default 8 photo crops; quick: 2 random 24 px)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="faithfulness batch (default 4; quick: 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--step-timeout", type=float, default=480.0,
                        help="seconds allowed to each command")
    args = parser.parse_args(argv)
    args.n_images = args.n_images or (2 if args.quick else 8)
    args.batch_size = args.batch_size or (2 if args.quick else 4)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "HF_HUB_OFFLINE": "1", "RRM_PLUGIN_CACHE": str(args.out / "rrm_cache"),
        "TORCH_HOME": str(args.out / "torch")}
    if not args.quick:
        hub = args.out / "hub"
        build_vit_b16_hub(hub)
        env["HF_HUB_CACHE"] = str(hub)
        args.photos = write_photos(args.out / "photos", args.n_images)
    else:
        args.photos = write_digit_sized_images(args.out / "images", args.n_images)
    run = Runner(args.out, env, args.step_timeout)
    report: dict = {"quick": args.quick, "environment": environment(args.device), "steps": {},
                    "tolerances": {"graph_rtol": GRAPH_RTOL, "curve_atol": CURVE_ATOL}}
    for name in args.steps:
        try:
            report["steps"][name] = STEPS[name](run, args)
        except Exception as e:  # a broken step is a failed step, and the others still run
            report["steps"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "runs": []}
    report["ok"] = all(step["ok"] for step in report["steps"].values())
    report["seconds"] = time.perf_counter() - t0
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = summary_lines(report)
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
