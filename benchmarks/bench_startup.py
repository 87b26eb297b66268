"""Start-up time: `rrm --help`, `import rrm_plugin` and SAE loading by name, against `import
sae_lens` (the reference) in the same run, and optionally against another checkout (e.g. the
code before the lazy imports) given with `--reference-tree`.

Each measurement is a fresh interpreter, timed wall-clock from the parent; median of `--repeats`.

    python benchmarks/bench_startup.py [--repeats 5] [--reference-tree DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "import sae_lens (reference)": "import sae_lens",
    "import rrm_plugin": "import rrm_plugin",
    "rrm --help": "import sys; sys.argv = ['rrm', '--help']\n"
                  "from rrm_plugin.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n"
                  "    pass",
    "rrm trace (argparse error)": "import sys; sys.argv = ['rrm', 'trace']\n"
                                  "from rrm_plugin.cli.main import main\ntry:\n    main()\n"
                                  "except SystemExit:\n    pass",
    # Registration is explicit (docs/architecture.md): no import-time hook on SAELens.
    "import rrm_plugin + SAE.from_pretrained": (
        "import rrm_plugin\nrrm_plugin.register_releases()\nfrom sae_lens import SAE\n"
        "SAE.from_pretrained('rrm-digits-vit', 'blocks.0.hook_resid_post')"),
}


def time_once(code: str, tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                   cwd=tree)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per case")
    parser.add_argument("--reference-tree", type=Path, default=None,
                        help="another checkout of rrm-plugin to time the same cases on")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the numbers")
    args = parser.parse_args()
    trees = {"this tree": ROOT}
    if args.reference_tree is not None:
        trees["reference tree"] = args.reference_tree.resolve()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, tree in trees.items():
        results[label] = {}
        for case, code in CASES.items():
            if "(reference)" in case and label != "this tree":
                continue
            # Interleave nothing: cases run back to back, each in fresh processes.
            times = [time_once(code, tree) for _ in range(args.repeats)]
            results[label][case] = {"median_s": statistics.median(times), "min_s": min(times),
                                    "max_s": max(times)}
            print(f"{label:>14} | {case:<42} | median {statistics.median(times):6.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)})", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"python": sys.version.split()[0], "repeats": args.repeats,
                                        "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
