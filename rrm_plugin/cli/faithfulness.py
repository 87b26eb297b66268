"""`rrm faithfulness`: insertion / deletion curves and AUCs (the RRM paper's protocol)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_baselines_arg, add_images_arg, add_model_args
from rrm_plugin.cli.dataset import add_run_args
from rrm_plugin.cli.output import add_overwrite_arg
from rrm_plugin.errors import RRMUserError
from rrm_plugin.metrics.image_indices import CLI, check_image_indices

# metrics.faithfulness.METHODS, circuits.pruning.CRITERIA / TIES, spelled out so that the options
# are checked without importing torch (tests/cli/test_cli_option_checks.py keeps them equal).
METHODS = ("rrm", "rrm_edge", "non_linearised", "random", "random_authors", "neuron")
CRITERIA = ("topn", "topk", "threshold")
TIES = ("raw", "index", "random")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="faithfulness of RRM circuits vs baselines (JSON + PNG)")
    add_model_args(p)
    add_images_arg(p, help_default="the embedded model's held-out set")
    add_baselines_arg(p)
    p.add_argument("--n-images", type=int, default=None,
                   help="correctly classified images to use (default: all)")
    p.add_argument("--image-indices", type=int, nargs="+", default=None, metavar="I",
                   help="only these correctly classified images (indices into --images or the "
                        "held-out set), e.g. to recompute a few images of a run bit for bit")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the image subset and the random circuits (default 42, as the "
                        "paper)")
    p.add_argument("--metric", choices=["adjusted_logit", "logit"], default="adjusted_logit",
                   help="attributed quantity (default adjusted_logit)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="circuit methods to compare (default: all of rrm, rrm_edge, "
                        "non_linearised, random, random_authors, neuron)")
    p.add_argument("--criterion", default="topn",
                   help="circuit size per layer, the authors' --graph_criterion: topn (default, "
                        "the paper's: a fraction p of the largest layer, swept over 0 .. 1), "
                        "topk (a fraction of each layer's own size, same sweep) or threshold "
                        "(cumulative normalised score tau in 0, .1, .., .9, .99, .9999, 1)")
    p.add_argument("--ties", default="raw",
                   help="order among nodes of equal normalised score (every score <= 0 under "
                        "clamp): raw (default: by raw score, then index), index, or random")
    p.add_argument("--skip-early-layers", type=int, default=0, metavar="N",
                   help="leave the first N SAE layers unmasked (the authors' "
                        "--skip_early_layers skips round(L / 3)); default 0")
    p.add_argument("--normalisation", choices=["clamp", "abs"], default="clamp",
                   help="node ranking: negative scores count as zero (clamp, default) or by "
                        "absolute value (abs)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batched forward pass")
    p.add_argument("--out", type=checks.out_path, default=Path("faithfulness"),
                   help="output folder, written as a unit (default ./faithfulness): "
                        "faithfulness.json, .png, .md")
    add_overwrite_arg(p)
    add_run_args(p)
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock."""
    from rrm_plugin.cli.output import check_output_directory

    checks.model_args(args)
    checks.image_paths("--images", args.images)
    checks.existing_file("--baselines", args.baselines, what="baselines file")
    unknown = [m for m in args.methods or () if m not in METHODS]
    if unknown:
        raise RRMUserError(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
    if args.criterion not in CRITERIA:
        raise RRMUserError(f"--criterion: unknown {args.criterion!r}; expected one of "
                           f"{list(CRITERIA)}")
    if args.ties not in TIES:
        raise RRMUserError(f"--ties: unknown {args.ties!r}; expected one of {list(TIES)}")
    checks.at_least("--n-images", args.n_images)
    check_image_indices(image_indices=args.image_indices, n_images=args.n_images, spelling=CLI)
    checks.at_least("--skip-early-layers", args.skip_early_layers, 0)
    checks.at_least("--batch-size", args.batch_size)
    checks.chunks_arg(args, args.out)
    check_output_directory(args.out, command="faithfulness", overwrite=args.overwrite,
                           inputs=checks.inputs_of(args, "images", "baselines", "model",
                                                   "release", "chunks"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.dataset import options_of, run_kwargs
    from rrm_plugin.metrics.faithfulness_result import HEADLINE_AXIS
    from rrm_plugin.workflows.faithfulness_folder import (
        FaithfulnessOptions,
        faithfulness_to_folder,
    )

    done = faithfulness_to_folder(args.out, options=options_of(args, FaithfulnessOptions),
                                  overwrite=args.overwrite, **run_kwargs(args))
    if not done.is_main:
        return 0
    result = done.result
    print(f"baselines: {done.baselines}")
    print(f"{len(result.image_indices)} correctly classified images of {done.model_name}")
    print(done.table)
    for other in result.margins():
        margin = result.margin("rrm", other)
        print(f"rrm vs {other}: insertion AUC (adjusted logit, {HEADLINE_AXIS} axis) difference "
              f"{margin.difference.mean:+.3f} +- {margin.difference.se:.3f}, ratio "
              f"{margin.ratio.mean:.2f} +- {margin.ratio.se:.2f} (s.e.)")
    print(f"results: {args.out / 'faithfulness.json'}, {args.out / 'faithfulness.png'}")
    if done.predicted_labels:
        print(f"{done.n_labels} unlabelled images: explaining each image's predicted class")
    print(done.counts)
    return 0
