"""`rrm lens --out DIR`: class-embedding-space analysis (Vilas et al. 2023) of an embedded model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_images_arg, add_model_args
from rrm_plugin.cli.dataset import add_run_args
from rrm_plugin.cli.output import add_overwrite_arg


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name, help="project tokens and SAE features onto the class embedding space"
    )
    p.add_argument("--out", type=checks.out_path, required=True,
                   help="folder for lens.json, lens_tensors.safetensors and the plots (written "
                        "as a unit)")
    add_overwrite_arg(p)
    add_model_args(p)
    add_images_arg(p, help_default="the embedded model's held-out set (with object masks)")
    p.add_argument("--n-images", type=int, default=None,
                   help="use only the first N images (default: all)")
    p.add_argument("--probe-images", nargs="+", default=None, metavar="PATH",
                   help="labelled images (ImageFolder) to train the linear probes on; default: "
                        "renders of the embedded model's training data, none for other models")
    p.add_argument("--n-probe-images", type=int, default=2000,
                   help="training renders for the probes of the embedded model (0 to skip)")
    p.add_argument("--blocks", type=int, nargs="+", default=None,
                   help="blocks (0-based) shown in the per-token maps (default: all)")
    p.add_argument("--permutations", type=int, default=1000,
                   help="permutations of the context-vs-object test")
    p.add_argument("--random-repeats", type=int, default=3,
                   help="random per-image patch orders averaged for the random_per_image baseline")
    p.add_argument("--random-shared-seeds", type=int, default=10,
                   help="seeds of the random_shared baseline (the authors' protocol: one random "
                        "patch order per seed, shared by all images; default 10)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="images per forward pass (default 128)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random baselines, permutations and control model")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_run_args(p)
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock."""
    from rrm_plugin.cli.output import check_output_directory

    checks.model_args(args)
    checks.image_paths("--images", args.images)
    checks.image_paths("--probe-images", args.probe_images)
    for name in ("batch_size", "permutations", "random_repeats", "random_shared_seeds",
                 "n_images"):
        checks.at_least(f"--{name.replace('_', '-')}", getattr(args, name))
    checks.at_least("--n-probe-images", args.n_probe_images, 0)
    checks.at_least("--blocks", args.blocks, 0)
    checks.chunks_arg(args, args.out)
    check_output_directory(args.out, command="lens", overwrite=args.overwrite,
                           inputs=checks.inputs_of(args, "images", "probe_images", "model",
                                                   "release", "chunks"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.dataset import options_of, run_kwargs
    from rrm_plugin.lens.report_output import format_summary
    from rrm_plugin.workflows.lens_folder import LensOptions, lens_to_folder

    start = time.time()
    done = lens_to_folder(args.out, options=options_of(args, LensOptions),
                          overwrite=args.overwrite, progress=not args.no_progress,
                          **run_kwargs(args))
    if not done.is_main:
        return 0
    if done.predicted_labels:
        print("unlabelled images: the model's predicted classes stand in for labels")
    print(format_summary(done.results.summary))
    for path in done.files:
        print(f"wrote {path}")
    print(done.counts)
    print(f"done in {time.time() - start:.0f} s")
    return 0
