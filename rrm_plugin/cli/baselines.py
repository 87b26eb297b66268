"""`rrm baselines`: per-position median (or mean) baselines for an SAE release."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_images_arg, add_model_args
from rrm_plugin.cli.dataset import add_run_args
from rrm_plugin.errors import RRMUserError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="compute attribution baselines of an SAE release")
    add_model_args(p)
    add_images_arg(p, help_default="fresh renders of the embedded model's training data")
    p.add_argument("--statistic", choices=["median", "mean"], default="median",
                   help="per-position statistic over the images (default median, as the paper)")
    p.add_argument("--n-images", type=int, default=2048,
                   help="reference renders when no --images are given")
    p.add_argument("--seed", type=int, default=4321, help="seed of the reference renders")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--out", type=checks.out_path, default=None,
                   help="output file (default: inside a --release folder, else the user cache "
                        "$RRM_PLUGIN_CACHE/baselines/RELEASE.safetensors, default "
                        "~/.cache/rrm_plugin; trace and faithfulness find it there); the "
                        "package's shipped files are never written")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_run_args(p)
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock (an explicit
    --out; the default path in the cache is known only once the release is loaded)."""
    from rrm_plugin.runs.output import check_out_file

    checks.model_args(args)
    if args.release is None or args.release.lower() == "none":
        raise RRMUserError("--release none: baselines need an SAE release")
    checks.image_paths("--images", args.images)
    checks.at_least("--n-images", args.n_images)
    checks.at_least("--batch-size", args.batch_size)
    checks.chunks_arg(args, None)
    if args.out is None:
        return []
    check_out_file(args.out, inputs=checks.inputs_of(args, "images", "model", "release"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.dataset import options_of, run_kwargs
    from rrm_plugin.workflows.baselines_file import BaselinesOptions, baselines_to_file

    done = baselines_to_file(args.out, options=options_of(args, BaselinesOptions),
                             progress=not args.no_progress, **run_kwargs(args))
    if done.is_main:
        print(f"{args.statistic} baselines of {done.release} over {done.over} -> {done.path}")
        print(done.counts)
    return 0
