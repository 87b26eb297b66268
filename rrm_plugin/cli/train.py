"""`rrm train-model` and `rrm train-saes`: train the embedded recipes or SAEs for own models.

Neither ever writes the package's shipped weights: both write to `--out` (required). Load what
they wrote with `--model DIR` / `--release DIR` (or `register_sae_release`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.output import add_overwrite_arg
from rrm_plugin.errors import RRMUserError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    if name == "train-model":
        p = sub.add_parser(name, help="train an embedded model's recipe (seeded, 10-15 min on 2 "
                                      "cores) into a new folder")
        p.add_argument("--out", type=checks.out_path, required=True,
                       help="folder for config.json + model.safetensors (use it as --model DIR)")
        p.add_argument("--recipe", default="digits-vit", choices=RECIPES,
                       help="which embedded model to train (default digits-vit; "
                            "digits-vit-spurious / digits-vit-balanced: the debiasing benchmark; "
                            "digits-vit-stroke / digits-vit-stroke-balanced: its stroke variant)")
        p.add_argument("--steps", type=int, default=None,
                       help="optimiser steps (default: the recipe's, 3000 for digits-vit, 2000 "
                            "for the digits-spurious models)")
        add_overwrite_arg(p)
        p.set_defaults(run=run_train_model)
    else:
        p = sub.add_parser(name, help="train one TopK SAE per block output of a HookedViT")
        p.add_argument("--out", type=checks.out_path, required=True,
                       help="release folder to write (use it as --release DIR)")
        p.add_argument("--model", default=None,
                       help="model name (`rrm list`) to train SAEs for; default: digits-vit "
                            "(digits-vit-spurious / digits-vit-stroke: the rrm-digits-vit-spurious "
                            "/ rrm-digits-vit-stroke recipe)")
        p.add_argument("--model-dir", type=Path, default=None,
                       help="instead of --model: a HookedViT saved by rrm (config.json + "
                            "model.safetensors)")
        p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                       help="training images: image files / folders (preprocessed as the model "
                            "expects) or one safetensors file with an 'images' tensor "
                            "[n, c, h, w]; default: the embedded digits-vit recipe's renders")
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        p.add_argument("--d-sae", type=int, default=None,
                       help="latents per SAE (default: the digits recipe's 128/256/256; "
                            "required for own models)")
        p.add_argument("--k", type=int, default=None,
                       help="active latents per token (default: the digits recipe's 8/16/16; "
                            "required for own models)")
        p.add_argument("--steps", type=int, default=None,
                       help="optimiser steps per SAE (default 2000)")
        p.add_argument("--lr", type=float, default=None,
                       help="Adam learning rate (default: 1e-3 in the digits recipe, else 2e-4 "
                            "as the paper)")
        p.add_argument("--n-baseline-images", type=int, default=2048,
                       help="digits recipe: renders for the release's median baselines "
                            "(default 2048, as `rrm baselines`)")
        add_overwrite_arg(p)
        p.set_defaults(run=run_train_saes)


RECIPES = ("digits-vit", "digits-vit-spurious", "digits-vit-balanced", "digits-vit-stroke",
           "digits-vit-stroke-balanced")
RECIPE_SAE_MODELS = (None, "digits-vit", "digits-vit-spurious", "digits-vit-stroke")
"""`--model` values (None: the default) whose SAEs `train-saes` trains by a shipped recipe."""


def _recipe(args: argparse.Namespace) -> bool:
    """`train-saes` trains by a shipped recipe (else: own SAEs, which need more options)."""
    return args.images is None and args.model in RECIPE_SAE_MODELS


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock."""
    from rrm_plugin.cli.output import check_output_directory

    if args.command == "train-model":
        checks.at_least("--steps", args.steps)
        check_output_directory(args.out, command="train-model", overwrite=args.overwrite)
        return [args.out]
    for name in ("--steps", "--d-sae", "--k", "--n-baseline-images"):
        checks.at_least(name, getattr(args, name[2:].replace("-", "_")))
    if args.lr is not None and not args.lr > 0:
        raise RRMUserError(f"--lr must be positive, got {args.lr}")
    if args.d_sae is not None and args.k is not None and args.k > args.d_sae:
        raise RRMUserError(f"--k {args.k} is more than --d-sae {args.d_sae}: a TopK SAE keeps k of "
                           "its d_sae latents per token")
    checks.check_device(args.device)
    checks.model_arg("--model", args.model)
    checks.existing_folder("--model-dir", args.model_dir, what="model folder")
    checks.model_arg("--model-dir", None if args.model_dir is None else str(args.model_dir))
    if not _recipe(args):
        if (args.model is None) == (args.model_dir is None):
            raise RRMUserError("give exactly one of --model NAME or --model-dir DIR")
        if not args.images:
            raise RRMUserError(f"give --images to train SAEs for {args.model or args.model_dir}")
        if args.d_sae is None or args.k is None:
            raise RRMUserError("to train own SAEs, give --d-sae and --k")
    if args.images and len(args.images) == 1 and args.images[0].endswith(".safetensors"):
        checks.existing_file("--images", args.images[0], what="images file (safetensors)")
    else:
        checks.image_paths("--images", args.images)
    check_output_directory(args.out, command="train-saes", overwrite=args.overwrite,
                           inputs=checks.inputs_of(args, "images", "model", "model_dir"))
    return [args.out]


def run_train_model(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rrm_plugin.cli.output import output_directory
    from rrm_plugin.threads import torch_threads
    from rrm_plugin.zoo.spurious import (
        SPURIOUS_TRAINING,
        VARIANTS,
        train_spurious_vit,
        variant_of_model,
    )
    from rrm_plugin.zoo.train_model import ModelTrainingConfig, train_digits_vit

    cfg = ModelTrainingConfig() if args.recipe == "digits-vit" else SPURIOUS_TRAINING
    cfg = cfg if args.steps is None else replace(cfg, n_steps=args.steps)
    start = time.time()
    with (output_directory(args.out, command="train-model", overwrite=args.overwrite) as tmp,
          torch_threads(cfg.threads)):  # the recipe's threads, for the accuracy line too
        if args.recipe == "digits-vit":
            _, acc = train_digits_vit(cfg, out=tmp)
            score = f"held-out top-1 accuracy {acc:.4f}"
        else:
            name = variant_of_model(args.recipe)
            model = train_spurious_vit(cfg, balanced=args.recipe.endswith("-balanced"), out=tmp,
                                       variant_name=name)
            score = _spurious_accuracy_line(model, VARIANTS[name].config)
    print(f"{score}; trained in {time.time() - start:.0f}s; saved to {args.out} (load it with "
          f"--model {args.out})")
    return 0


def _spurious_accuracy_line(model, benchmark) -> str:
    from rrm_plugin.data.spurious import spurious_test_set
    from rrm_plugin.debias.ablation import predict
    from rrm_plugin.debias.evaluation import group_accuracy

    test = spurious_test_set(benchmark)
    result = group_accuracy((predict(model, test.images) == test.labels).float(), test.groups)
    return (f"digits-spurious test accuracy {result.average:.4f}, worst group "
            f"{result.worst_group:.4f}")


def run_train_saes(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.output import output_directory

    start = time.time()
    configs = _recipe_configs(args) if _recipe(args) else None  # checked before the work
    with output_directory(args.out, command="train-saes", overwrite=args.overwrite) as tmp:
        _train_saes_into(args, tmp, configs)
    if _recipe(args):
        model_arg = f"--model {args.model_dir or args.model or 'digits-vit'}"
        print(f"use them with `{model_arg} --release {args.out}`")
    print(f"SAEs trained in {time.time() - start:.0f}s; saved to {args.out}")
    return 0


def _recipe_configs(args: argparse.Namespace) -> dict:
    """The recipe's SAE configs with the options' overrides; k <= d_sae for each."""
    from dataclasses import replace

    from rrm_plugin.zoo.recipes import DIGITS_SAE_CONFIGS

    overrides = {key: value for key, value in (
        ("n_steps", args.steps), ("lr", args.lr), ("d_sae", args.d_sae), ("k", args.k))
        if value is not None}
    for hook, cfg in DIGITS_SAE_CONFIGS.items():
        d_sae, k = overrides.get("d_sae", cfg.d_sae), overrides.get("k", cfg.k)
        if k > d_sae:
            given = "--k" if "k" in overrides else "the recipe's k"
            raise RRMUserError(f"{given} {k} is more than the d_sae {d_sae} of {hook} (the "
                               "recipe's unless --d-sae is given): give --k <= --d-sae")
    return {h: replace(c, **overrides) for h, c in DIGITS_SAE_CONFIGS.items()}


def _train_saes_into(args: argparse.Namespace, out: Path, configs: dict | None) -> None:
    if configs is not None:
        from rrm_plugin.zoo.recipes import train_digits_saes
        from rrm_plugin.zoo.spurious import train_spurious_saes

        if args.model in ("digits-vit-spurious", "digits-vit-stroke"):
            train_spurious_saes(out=out, model_dir=args.model_dir, configs=configs,
                                n_baseline_images=args.n_baseline_images,
                                variant_name="stroke" if args.model == "digits-vit-stroke"
                                else "marker")
        else:
            train_digits_saes(out=out, model_dir=args.model_dir, configs=configs,
                              n_baseline_images=args.n_baseline_images)
    else:
        _train_own_saes(args, out)


def _own_model_and_images(args: argparse.Namespace):
    from rrm_plugin.hosts.prisma import check_images
    from rrm_plugin.io import read_tensors
    from rrm_plugin.workflows.workspace import check_device_available
    from rrm_plugin.zoo.inputs import load_images, model_preprocessing
    from rrm_plugin.zoo.models import load_model, load_model_from_directory

    check_device_available(args.device)
    if args.model_dir is not None:  # check_args: exactly one of --model, --model-dir
        model, name = load_model_from_directory(args.model_dir), None
    else:
        model, name = load_model(args.model, device=args.device), args.model
    model_name = name or model.cfg.model_name
    if len(args.images) == 1 and args.images[0].endswith(".safetensors"):
        tensors = read_tensors(Path(args.images[0]), what="images file")
        if "images" not in tensors:
            raise RRMUserError(f"{args.images[0]} has no 'images' tensor (found {sorted(tensors)})")
        images = tensors["images"]
    else:
        images = load_images(args.images, model=model,
                             preprocessing=model_preprocessing(model, name=model_name)).images
    return model, model_name, check_images(model, images.to(args.device))


def _train_own_saes(args: argparse.Namespace, out: Path) -> Path:
    from rrm_plugin.saes.pipeline import default_sae_hooks, train_sae_release
    from rrm_plugin.saes.training import TopKTrainingConfig

    model, model_name, images = _own_model_and_images(args)
    cfg = TopKTrainingConfig(d_sae=args.d_sae, k=args.k, n_steps=args.steps or 2000,
                             lr=args.lr or 2e-4)
    configs = {hook: cfg for hook in default_sae_hooks(model)}
    train_sae_release(model, images, configs, model_name=model_name, out=out)
    print(f"load them with rrm_plugin.register_sae_release(NAME, {str(args.out)!r}, "
          f"model_name={model_name!r})")
    return args.out
