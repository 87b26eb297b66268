"""`rrm eval-saes`: SAELens-named metrics per layer and for the whole replacement model."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.cli.common import add_images_arg, add_model_args
from rrm_plugin.cli.dataset import add_run_args


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="evaluate an SAE release (reconstruction and spliced-in)")
    add_model_args(p)
    add_images_arg(p, help_default="the embedded model's held-out set")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--out", type=Path, default=Path("sae_eval.json"),
                   help="JSON file to write (default ./sae_eval.json)")
    add_run_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from rrm_plugin.cli.common import load_image_args, load_workspace
    from rrm_plugin.cli.dataset import chunk_report, dataset_run, start_processes
    from rrm_plugin.io import check_not_shipped, write_json
    from rrm_plugin.saes.evaluation import evaluate_saes, format_table

    torch.set_num_threads(2)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_not_shipped(args.out)
    if args.out.is_dir():
        raise IsADirectoryError(f"--out {args.out} is a folder; expected a JSON file path")
    ctx = start_processes(args)
    ws = load_workspace(args)
    loaded = load_image_args(args.images, ws)
    with dataset_run(args, ws, ctx, command="eval-saes", out=args.out,
                     images=loaded.images, labels=loaded.labels) as run:
        results = evaluate_saes(ws.model, ws.saes, loaded.images, loaded.labels,
                                batch_size=args.batch_size, progress=ctx.is_main)
        report = chunk_report(run)
        if ctx.is_main:
            if loaded.labels is None:
                print("unlabelled images: the model's predictions stand in for labels")
            print(format_table(results))
            write_json(args.out, {"model": ws.model_name, "release": ws.release,
                                  "n_images": len(loaded.images), "metrics": results})
            print(f"wrote {args.out}")
            print(report)
    return 0
