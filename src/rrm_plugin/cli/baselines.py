"""`rrm baselines`: per-position median (or mean) baselines for an SAE release."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="compute attribution baselines of an SAE release")
    p.add_argument("--release", default="rrm-digits-vit", help="embedded SAE release")
    p.add_argument("--statistic", choices=["median", "mean"], default="median")
    p.add_argument("--n-images", type=int, default=2048, help="reference images (training renders)")
    p.add_argument("--seed", type=int, default=4321, help="seed of the reference renders")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: baselines.safetensors in the release folder)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import rrm_plugin
    from rrm_plugin.attribution.baselines import compute_baselines, release_baselines_path
    from rrm_plugin.data.digits import train_sampler
    from rrm_plugin.zoo.models import MODELS
    from rrm_plugin.zoo.releases import SAE_RELEASES

    torch.set_num_threads(2)
    if args.n_images < 1:
        raise ValueError(f"--n-images must be at least 1, got {args.n_images}")
    out = args.out or release_baselines_path(args.release)
    model_name = SAE_RELEASES[args.release].model_name
    model = rrm_plugin.load_model(model_name)
    saes = rrm_plugin.load_saes(args.release)
    images = train_sampler(MODELS[model_name].data, seed=args.seed)(args.n_images).images
    baselines = compute_baselines(model, saes, images, statistic=args.statistic)
    baselines.save(out)
    print(f"{args.statistic} baselines of {args.release} over {args.n_images} renders -> {out}")
    return 0
