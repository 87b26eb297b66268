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
    checks.model_args(args)
    checks.image_paths("--images", args.images)
    checks.at_least("--batch-size", args.batch_size)
    checks.chunks_arg(args, None)
    checks.check_out_file(args.out, inputs=checks.inputs_of(args, "images", "model", "release"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.common import workspace_of
    from rrm_plugin.cli.dataset import chunk_report, dataset_run, start_processes
    from rrm_plugin.io import write_json
    from rrm_plugin.metrics.sae_evaluation import evaluate_saes, format_table
    from rrm_plugin.workflows.inputs import dataset_images

    ctx = start_processes(args)
    ws = workspace_of(args)
    loaded = dataset_images(args.images, ws.model)
    with dataset_run(args, ws, ctx, command="eval-saes", out=args.out,
                     images=loaded.images, labels=loaded.labels) as run:
        results = evaluate_saes(ws.model, ws.saes, loaded.images, loaded.labels,
                                batch_size=args.batch_size, progress=ctx.is_main)
        report = chunk_report(run)
        if ctx.is_main:
            if loaded.labels is None:
                print("unlabelled images: the model's predictions stand in for labels")
            print(format_table(results))
            for line in normalisation_warnings(ws, results):
                print(f"warning: {line}", file=sys.stderr)
            write_json(args.out, {"model": ws.model_name, "release": ws.release,
                                  "n_images": len(loaded.images), "metrics": results})
            print(f"wrote {args.out}")
            print(report)
    return 0


def normalisation_warnings(ws, results: dict) -> list[str]:
    """SAEs explaining far less variance than their release documents (a wrong normalisation)."""
    from rrm_plugin.metrics.sae_sanity import release_warnings

    measured = {hook: row["explained_variance"] for hook, row in results.items()
                if hook in ws.saes and "explained_variance" in row}
    return release_warnings(ws.release, ws.saes, measured)
