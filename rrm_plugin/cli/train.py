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
        p.add_argument("--model", default=None,
                       help="model name (`rrm list`) to train SAEs for; default: digits-vit")
        p.add_argument("--model-dir", type=Path, default=None,
                       help="instead of --model: a HookedViT saved by rrm (config.json + "
                            "model.safetensors)")
        p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                       help="training images: image files / folders (preprocessed as the model "
                            "expects) or one safetensors file with an 'images' tensor "
                            "[n, c, h, w]; default: the embedded digits-vit recipe")
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
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
    if args.images is None and args.model in (None, "digits-vit"):
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


def _own_model_and_images(args: argparse.Namespace):
    from rrm_plugin.cli.common import model_preprocessing
    from rrm_plugin.data.images import load_images
    from rrm_plugin.hosts.prisma import check_images
    from rrm_plugin.io import read_tensors
    from rrm_plugin.zoo.models import load_model, load_model_from_directory

    if (args.model is None) == (args.model_dir is None):
        raise SystemExit("give exactly one of --model NAME or --model-dir DIR")
    if args.model_dir is not None:
        model, name = load_model_from_directory(args.model_dir), None
    else:
        model, name = load_model(args.model, device=args.device), args.model
    model_name = name or model.cfg.model_name
    if not args.images:
        raise SystemExit(f"give --images to train SAEs for {model_name}")
    if len(args.images) == 1 and args.images[0].endswith(".safetensors"):
        tensors = read_tensors(Path(args.images[0]))
        if "images" not in tensors:
            raise SystemExit(f"{args.images[0]} has no 'images' tensor (found {sorted(tensors)})")
        images = tensors["images"]
    else:
        images = load_images(args.images, model_preprocessing(model_name, model)).images
    return model, model_name, check_images(model, images.to(args.device))


def _train_own_saes(args: argparse.Namespace) -> Path:
    from rrm_plugin.saes.pipeline import default_sae_hooks, train_sae_release
    from rrm_plugin.saes.training import TopKTrainingConfig

    if args.out is None or args.d_sae is None or args.k is None:
        raise SystemExit("to train own SAEs, give --out, --d-sae and --k")
    model, model_name, images = _own_model_and_images(args)
    cfg = TopKTrainingConfig(d_sae=args.d_sae, k=args.k, n_steps=args.steps, lr=args.lr)
    configs = {hook: cfg for hook in default_sae_hooks(model)}
    train_sae_release(model, images, configs, model_name=model_name, out=args.out)
    print(f"load them with rrm_plugin.register_sae_release(NAME, {str(args.out)!r}, "
          f"model_name={model_name!r})")
    return args.out
