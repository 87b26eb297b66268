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


def _select_layers(saes: dict, layers: list[int] | None) -> dict:
    hooks = list(saes)
    if layers is None:
        return saes
    bad = [k for k in layers if not 0 <= k < len(hooks)]
    if bad:
        raise RRMUserError(
            f"--layers {bad} out of range: the release has layers 0..{len(hooks) - 1}"
            f" ({', '.join(hooks)})")
    chosen = sorted(set(layers))
    if chosen != list(range(chosen[0], chosen[-1] + 1)):
        raise RRMUserError(f"--layers {chosen} must be consecutive (circuits join adjacent layers)")
    return {hooks[k]: saes[hooks[k]] for k in chosen}


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.common import workspace_of
    from rrm_plugin.cli.dataset import (
        baseline_tensors,
        chunk_report,
        dataset_run,
        start_processes,
    )
    from rrm_plugin.cli.output import output_directory
    from rrm_plugin.features.dashboard import build_dashboards
    from rrm_plugin.workflows.baselines import resolve_baselines
    from rrm_plugin.workflows.inputs import dataset_images
    from rrm_plugin.zoo.inputs import class_names_of

    start = time.time()
    ctx = start_processes(args)
    ws = workspace_of(args)
    if not ws.saes:
        raise RRMUserError("rrm features needs an SAE release: give --release NAME or FOLDER")
    saes = _select_layers(ws.saes, args.layers)
    loaded = dataset_images(args.images, ws.model)
    progress = not args.no_progress and ctx.is_main
    with dataset_run(args, ws, ctx, command="features", out=args.out, images=loaded.images,
                     progress=progress) as run:
        baselines = what = None
        if args.n_circuit_images != 0:
            baselines, what, _ = resolve_baselines(ws.model, saes, images=loaded.images,
                                                path=args.baselines, release=ws.release)
            run.extend_key(baseline_tensors(baselines))
        dash = build_dashboards(
            ws.model, saes, loaded.images, model_name=ws.model_name, release=str(ws.release),
            class_names=class_names_of(ws.model), baselines=baselines,
            n_circuit_images=args.n_circuit_images or None, k=args.k,
            batch_size=args.batch_size, files=[str(f) for f in loaded.files] or None,
            progress=progress, layer_ids=[list(ws.saes).index(h) for h in saes],
        )
        report = chunk_report(run)
        if ctx.is_main:
            if what is not None:
                print(f"baselines: {what}")
            _write(args, ws.model, dash, saes, output_directory, progress=progress)
            print(report)
            print(f"done in {time.time() - start:.0f} s")
    return 0


def _write(args, model, dash, saes, output_directory, *, progress: bool) -> None:
    from rrm_plugin.features.dashboard import write_dashboards

    if args.types:  # generated stimuli, not the image set: rank 0 alone
        from rrm_plugin.features.types import feature_types

        result = feature_types(model, saes, progress=progress)
        dash.types = {h: r.types for h, r in result.layers.items()}
    with output_directory(args.out, command="features", overwrite=args.overwrite) as tmp:
        written = write_dashboards(dash, tmp, progress=progress)
        if args.types:
            from rrm_plugin.features.types_report import write_types

            written += write_types(result, tmp)
    written = [args.out / p.relative_to(tmp) for p in map(Path, written)]
    for k, hook in enumerate(dash.hook_names):
        t = dash.top[hook]
        print(f"layer {k} ({hook}): {t.d_sae} features, {int((t.image_density == 0).sum())} "
              f"never fire; median image density {float(t.image_density.median()):.3f}")
    for path in written:
        print(f"wrote {path}")
