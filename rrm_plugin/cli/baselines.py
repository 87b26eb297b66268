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


def default_output(release: str) -> Path:
    from rrm_plugin.zoo.baselines import cached_baselines_path

    return cached_baselines_path(release)


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock (an explicit
    --out; the default path in the cache is known only once the release is loaded)."""
    checks.model_args(args)
    if args.release is None or args.release.lower() == "none":
        raise RRMUserError("--release none: baselines need an SAE release")
    checks.image_paths("--images", args.images)
    checks.at_least("--n-images", args.n_images)
    checks.at_least("--batch-size", args.batch_size)
    checks.chunks_arg(args, None)
    if args.out is None:
        return []
    checks.check_out_file(args.out, inputs=checks.inputs_of(args, "images", "model", "release"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.attribution.baselines import compute_baselines
    from rrm_plugin.cli.common import workspace_of
    from rrm_plugin.cli.dataset import chunk_report, dataset_run, start_processes
    from rrm_plugin.workflows.inputs import reference_renders

    ctx = start_processes(args)
    ws = workspace_of(args)
    images, what = reference_renders(args.images, ws.model, n_images=args.n_images,
                                     seed=args.seed)
    out = args.out or default_output(ws.release)
    from rrm_plugin.io import check_not_shipped

    check_not_shipped(out)  # before the work, not after
    with dataset_run(args, ws, ctx, command="baselines", out=out, images=images) as run:
        # Gathered per image from every process, then one median: exactly one process's result.
        baselines = compute_baselines(ws.model, ws.saes, images, statistic=args.statistic,
                                      batch_size=args.batch_size,
                                      progress=ctx.is_main and not args.no_progress)
        report = chunk_report(run)
        if ctx.is_main:
            baselines.save(out)
            print(f"{args.statistic} baselines of {ws.release} over {what} -> {out}")
            print(report)
    return 0
