"""`rrm features --out DIR`: dashboards of every feature of an SAE release over an image set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_baselines_arg, add_images_arg, add_model_args
from rrm_plugin.cli.dataset import add_run_args
from rrm_plugin.cli.output import add_overwrite_arg
from rrm_plugin.errors import RRMUserError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="feature dashboards: top images, densities, lens, circuits")
    p.add_argument("--out", type=checks.out_path, required=True,
                   help="folder for features.json, cards.json, contact sheets and pages")
    add_model_args(p)
    add_images_arg(p, help_default="the embedded model's held-out set")
    add_baselines_arg(p)
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="SAE layers (0-based position in the release) to cover (default: all)")
    p.add_argument("--k", type=int, default=8, help="top images per feature (default 8)")
    p.add_argument("--n-circuit-images", type=int, default=None,
                   help="attribute only the first N images for circuit statistics (default: "
                        "all; 0 skips circuits)")
    p.add_argument("--types", action="store_true",
                   help="also measure feature types with generated probe stimuli (digits canvas "
                        "models only)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per forward pass (default 64)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_overwrite_arg(p)
    add_run_args(p)
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock."""
    from rrm_plugin.cli.output import check_output_directory

    checks.model_args(args)
    if args.release is None or args.release.lower() == "none":
        raise RRMUserError("rrm features needs an SAE release: give --release NAME or FOLDER")
    checks.image_paths("--images", args.images)
    checks.existing_file("--baselines", args.baselines, what="baselines file")
    checks.at_least("--k", args.k)
    checks.at_least("--batch-size", args.batch_size)
    checks.at_least("--n-circuit-images", args.n_circuit_images, 0)
    checks.at_least("--layers", args.layers, 0)
    checks.chunks_arg(args, args.out)
    check_output_directory(args.out, command="features", overwrite=args.overwrite,
                           inputs=checks.inputs_of(args, "images", "baselines", "model",
                                                   "release", "chunks"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.dataset import options_of, run_kwargs
    from rrm_plugin.workflows.features_folder import FeaturesOptions, features_to_folder

    start = time.time()
    done = features_to_folder(args.out, options=options_of(args, FeaturesOptions),
                              overwrite=args.overwrite, progress=not args.no_progress,
                              **run_kwargs(args))
    if not done.is_main:
        return 0
    if done.baselines is not None:
        print(f"baselines: {done.baselines}")
    dash = done.dashboards
    for k, hook in enumerate(dash.hook_names):
        t = dash.top[hook]
        print(f"layer {k} ({hook}): {t.d_sae} features, {int((t.image_density == 0).sum())} "
              f"never fire; median image density {float(t.image_density.median()):.3f}")
    for path in done.files:
        print(f"wrote {path}")
    print(done.counts)
    print(f"done in {time.time() - start:.0f} s")
    return 0
