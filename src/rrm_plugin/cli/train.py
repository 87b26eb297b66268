"""`rrm train-model` and `rrm train-saes`: regenerate the shipped weights or train own SAEs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rrm_plugin.zoo.models import MODELS


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    if name == "train-model":
        p = sub.add_parser(name, help="train the embedded digits-vit (seeded, ~10 min on 2 cores)")
        p.add_argument("--out", type=Path, default=MODELS["digits-vit"].directory)
        p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: recipe)")
        p.set_defaults(run=run_train_model)
    else:
        p = sub.add_parser(name, help="train one TopK SAE per block output of a HookedViT")
        p.add_argument("--out", type=Path, default=None,
                       help="release folder (default: the shipped rrm-digits-vit folder)")
        p.add_argument("--model-dir", type=Path, default=None,
                       help="a HookedViT saved by rrm (config.json + model.safetensors); "
                            "default: the embedded digits-vit with its recipe")
        p.add_argument("--images", type=Path, default=None,
                       help="safetensors file with an 'images' tensor [n, c, h, w] (own models)")
        p.add_argument("--d-sae", type=int, default=None)
        p.add_argument("--k", type=int, default=None)
        p.add_argument("--steps", type=int, default=2000)
        p.add_argument("--lr", type=float, default=2e-4)
        p.set_defaults(run=run_train_saes)


def run_train_model(args: argparse.Namespace) -> int:
    from rrm_plugin.zoo.train_model import ModelTrainingConfig, train_digits_vit

    cfg = ModelTrainingConfig() if args.steps is None else ModelTrainingConfig(n_steps=args.steps)
    start = time.time()
    _, acc = train_digits_vit(cfg, out=args.out)
    print(f"held-out top-1 accuracy {acc:.4f}; trained in {time.time() - start:.0f}s; "
          f"saved to {args.out}")
    return 0


def run_train_saes(args: argparse.Namespace) -> int:
    import rrm_plugin
    from rrm_plugin.zoo.recipes import train_digits_saes
    from rrm_plugin.zoo.releases import SAE_RELEASES

    start = time.time()
    if args.images is None:
        out = args.out or SAE_RELEASES["rrm-digits-vit"].directory
        train_digits_saes(out=out, model_dir=args.model_dir)
        if args.out is None:
            # Baselines are tied to the SAE weights (hash-checked): refresh the shipped ones.
            from rrm_plugin.cli.main import build_parser

            rrm_plugin.register_sae_release("rrm-digits-vit", out, model_name="digits-vit")
            baseline_args = build_parser().parse_args(["baselines"])
            baseline_args.run(baseline_args)
    else:
        out = _train_own_saes(args)
    print(f"SAEs trained in {time.time() - start:.0f}s; saved to {out}")
    return 0


def _train_own_saes(args: argparse.Namespace) -> Path:
    from rrm_plugin.hosts.prisma import check_images
    from rrm_plugin.io import read_tensors
    from rrm_plugin.saes.pipeline import default_sae_hooks, train_sae_release
    from rrm_plugin.saes.training import TopKTrainingConfig
    from rrm_plugin.zoo.models import load_model_from_directory

    if args.model_dir is None or args.out is None or args.d_sae is None or args.k is None:
        raise SystemExit("with --images, also give --model-dir, --out, --d-sae and --k")
    model = load_model_from_directory(args.model_dir)
    tensors = read_tensors(args.images)
    if "images" not in tensors:
        raise SystemExit(f"{args.images} has no 'images' tensor (found {sorted(tensors)})")
    images = check_images(model, tensors["images"])
    cfg = TopKTrainingConfig(d_sae=args.d_sae, k=args.k, n_steps=args.steps, lr=args.lr)
    configs = {hook: cfg for hook in default_sae_hooks(model)}
    train_sae_release(model, images, configs, model_name=model.cfg.model_name, out=args.out)
    return args.out
