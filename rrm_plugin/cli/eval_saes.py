"""`rrm eval-saes`: SAELens-named metrics per layer and for the whole replacement model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_images_arg, add_model_args
from rrm_plugin.cli.dataset import add_run_args


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="evaluate an SAE release (reconstruction and spliced-in)")
    add_model_args(p)
    add_images_arg(p, help_default="the embedded model's held-out set")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--out", type=checks.out_path, default=Path("sae_eval.json"),
                   help="JSON file to write (default ./sae_eval.json)")
    add_run_args(p)
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock."""
    from rrm_plugin.runs.output import check_out_file

    checks.model_args(args)
    checks.image_paths("--images", args.images)
    checks.at_least("--batch-size", args.batch_size)
    checks.chunks_arg(args, None)
    check_out_file(args.out, inputs=checks.inputs_of(args, "images", "model", "release"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.dataset import options_of, run_kwargs
    from rrm_plugin.metrics.sae_evaluation import format_table
    from rrm_plugin.workflows.sae_eval_file import SAEEvalOptions, evaluate_saes_to_file

    done = evaluate_saes_to_file(args.out, options=options_of(args, SAEEvalOptions),
                                 **run_kwargs(args))
    if not done.is_main:
        return 0
    if done.predicted_labels:
        print("unlabelled images: the model's predictions stand in for labels")
    print(format_table(done.metrics))
    for line in done.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"wrote {args.out}")
    print(done.counts)
    return 0
