"""`rrm lens --out DIR`: class-embedding-space analysis (Vilas et al. 2023) of an embedded model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name, help="project tokens and SAE features onto the class embedding space"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for lens.json and the plots")
    p.add_argument("--model", default="digits-vit", help="embedded model name")
    p.add_argument("--saes", default="rrm-digits-vit",
                   help="SAE release for the feature lens ('none' to skip)")
    p.add_argument("--n-images", type=int, default=None,
                   help="use only the first N held-out images (default: all)")
    p.add_argument("--n-probe-images", type=int, default=2000,
                   help="training images for the linear probes (0 to skip the probes)")
    p.add_argument("--blocks", type=int, nargs="+", default=None,
                   help="blocks (0-based) shown in the per-token maps (default: all)")
    p.add_argument("--permutations", type=int, default=1000,
                   help="permutations of the context-vs-object test")
    p.add_argument("--random-repeats", type=int, default=3,
                   help="random patch orders averaged for the random-removal baseline")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def _load_saes(release: str):
    import rrm_plugin

    if release.lower() == "none":
        return None
    try:
        return rrm_plugin.load_saes(release)
    except (KeyError, FileNotFoundError) as err:
        print(f"feature lens skipped: SAE release {release!r} is not available ({err})")
        return None


def run(args: argparse.Namespace) -> int:
    import torch

    import rrm_plugin
    from rrm_plugin.data import train_sampler
    from rrm_plugin.hosts.prisma import build_hooked_vit
    from rrm_plugin.lens.report import LensConfig, format_summary, run_lens, write_lens_report
    from rrm_plugin.zoo.models import MODELS

    start = time.time()
    model = rrm_plugin.load_model(args.model)
    test = rrm_plugin.load_test_set(args.model)
    n = len(test.labels) if args.n_images is None else args.n_images
    if not 1 <= n <= len(test.labels):
        raise SystemExit(f"--n-images must be in [1, {len(test.labels)}], got {n}")
    images, labels, mask = test.images[:n], test.labels[:n], test.object_mask[:n]
    probe_images = probe_labels = None
    if args.n_probe_images > 0:
        # Probes train on fresh renders of the training digits, never on the held-out images.
        train = train_sampler(MODELS[args.model].data, seed=args.seed + 1)(args.n_probe_images)
        probe_images, probe_labels = train.images, train.labels
    control = build_hooked_vit(model.cfg, seed=args.seed).eval()
    config = LensConfig(
        batch_size=args.batch_size, n_permutations=args.permutations,
        random_repeats=args.random_repeats, seed=args.seed, progress=not args.no_progress,
        map_blocks=None if args.blocks is None else tuple(args.blocks),
    )
    torch.manual_seed(args.seed)
    results = run_lens(
        model, images=images, labels=labels, object_mask=mask, probe_images=probe_images,
        probe_labels=probe_labels, control=control, saes=_load_saes(args.saes), config=config,
    )
    written = write_lens_report(results, args.out, images=images, labels=labels,
                                object_mask=mask, config=config)
    print(format_summary(results.summary))
    for path in written:
        print(f"wrote {path}")
    print(f"done in {time.time() - start:.0f} s")
    return 0
