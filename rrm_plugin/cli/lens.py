"""`rrm lens --out DIR`: class-embedding-space analysis (Vilas et al. 2023) of an embedded model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_images_arg, add_model_args
from rrm_plugin.cli.dataset import add_run_args
from rrm_plugin.cli.output import add_overwrite_arg
from rrm_plugin.errors import RRMUserError


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


def _lens_inputs(args: argparse.Namespace, ws):
    """Images, labels and object masks (embedded held-out set only), and the probe set."""

    import rrm_plugin
    from rrm_plugin.workflows.inputs import dataset_images, predicted_labels
    from rrm_plugin.zoo.datasets import training_sampler
    from rrm_plugin.zoo.models import MODELS

    dtype = next(ws.model.parameters()).dtype
    mask = None
    if args.images:
        loaded = dataset_images(args.images, ws.model)
        images, labels = loaded.images, loaded.labels
        if labels is None:
            labels = predicted_labels(ws.model, images, batch_size=args.batch_size)
            print("unlabelled images: the model's predicted classes stand in for labels")
    elif ws.model_name in MODELS:
        test = rrm_plugin.load_test_set(ws.model_name)
        images, labels, mask = test.images, test.labels, test.object_mask
        images, labels = images.to(ws.device, dtype), labels.to(ws.device)
    else:
        raise RRMUserError(f"model {ws.model_name!r} has no embedded images: give --images")
    n = len(labels) if args.n_images is None else args.n_images
    if not 1 <= n <= len(labels):
        raise RRMUserError(f"--n-images must be in [1, {len(labels)}], got {n}")
    images, labels = images[:n], labels[:n]
    mask = None if mask is None else mask[:n].to(ws.device)
    probe_images = probe_labels = None
    if args.probe_images:
        probes = dataset_images(args.probe_images, ws.model)
        if probes.labels is None:
            raise RRMUserError("--probe-images need labels: give an ImageFolder tree "
                               "(one folder per class)")
        probe_images, probe_labels = probes.images, probes.labels
    elif ws.model_name in MODELS and args.n_probe_images > 0:
        # Probes train on fresh renders of the training digits, never on the held-out images.
        train = training_sampler(ws.model_name, seed=args.seed + 1)(args.n_probe_images)
        probe_images = train.images.to(ws.device, dtype)
        probe_labels = train.labels.to(ws.device)
    return images, labels, mask, probe_images, probe_labels


def run(args: argparse.Namespace) -> int:
    import torch

    from rrm_plugin.cli.common import workspace_of
    from rrm_plugin.cli.dataset import chunk_report, dataset_run, start_processes
    from rrm_plugin.cli.output import output_directory
    from rrm_plugin.hosts.prisma import build_hooked_vit
    from rrm_plugin.lens.report import LensConfig, run_lens
    from rrm_plugin.lens.report_output import format_summary, write_lens_report

    start = time.time()
    no_saes = args.release is not None and args.release.lower() == "none"
    ctx = start_processes(args)
    ws = workspace_of(args, with_saes=not no_saes)
    images, labels, mask, probe_images, probe_labels = _lens_inputs(args, ws)
    control = build_hooked_vit(ws.model.cfg, seed=args.seed).to(
        device=ws.device, dtype=next(ws.model.parameters()).dtype).eval()
    config = LensConfig(
        batch_size=args.batch_size, n_permutations=args.permutations,
        random_repeats=args.random_repeats, random_shared_seeds=args.random_shared_seeds,
        seed=args.seed, progress=not args.no_progress and ctx.is_main,
        map_blocks=None if args.blocks is None else tuple(args.blocks),
    )
    with dataset_run(args, ws, ctx, command="lens", out=args.out, images=images,
                     progress=config.progress) as run:
        run.extend_key([t for t in (labels, mask, probe_images, probe_labels) if t is not None])
        torch.manual_seed(args.seed)
        results = run_lens(
            ws.model, images=images, labels=labels, object_mask=mask, probe_images=probe_images,
            probe_labels=probe_labels, control=control, saes=ws.saes or None, config=config,
        )
        report = chunk_report(run)
        if ctx.is_main:
            with output_directory(args.out, command="lens", overwrite=args.overwrite) as tmp:
                written = write_lens_report(results, tmp, images=images, labels=labels,
                                            object_mask=mask, config=config)
            print(format_summary(results.summary))
            for path in written:
                print(f"wrote {args.out / Path(path).relative_to(tmp)}")
            print(report)
            print(f"done in {time.time() - start:.0f} s")
    return 0
