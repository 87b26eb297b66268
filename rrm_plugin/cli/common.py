"""Options shared by the commands: model, SAE release, images, baselines, device and dtype."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple

from rrm_plugin.errors import RRMUserError

DEFAULT_RELEASE = "rrm-digits-vit"
DTYPE_CHOICES = ("float32", "float64", "bfloat16", "float16")


def add_model_args(p: argparse.ArgumentParser, *, release: bool = True,
                   default_release: str = DEFAULT_RELEASE) -> None:
    p.add_argument("--model", default=None,
                   help="model name (`rrm list`) or a folder saved by `save_model`; default: "
                        "the model of --release")
    if release:
        p.add_argument("--release", default=default_release,
                       help=f"SAE release (`rrm list`) or a folder written by `rrm train-saes` "
                            f"(default {default_release})")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="model and SAE dtype (default: as loaded, float32)")


def add_images_arg(p: argparse.ArgumentParser, *, help_default: str) -> None:
    p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="image files or folders (PNG/JPEG; a folder of class folders gives "
                        f"labels), preprocessed as the model expects; default: {help_default}")


def add_baselines_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baselines", type=Path, default=None,
                   help="baselines file from `rrm baselines --out`; default: the release's "
                        "shipped or cached baselines, else the median over the images (zero "
                        "for a single image)")


class Workspace(NamedTuple):
    model: Any
    saes: dict
    model_name: str
    release: str | None
    device: str


def resolve_model_name(model: str | None, release: str | None) -> str:
    from rrm_plugin.zoo.releases import release_model_name

    if model is not None:
        return model
    if release is None:
        return "digits-vit"
    if Path(release).is_dir():
        raise RRMUserError(f"--release {release} is a folder of your own SAEs: give --model too")
    return release_model_name(release)


def load_workspace(args: argparse.Namespace, *, with_saes: bool = True) -> Workspace:
    """The model and SAEs named by `--model` / `--release`, on `--device` in `--dtype`."""
    import rrm_plugin
    from rrm_plugin.provenance import check_release_provenance
    from rrm_plugin.saes.registry import local_release_directory
    from rrm_plugin.zoo.models import DTYPES

    release = getattr(args, "release", None)
    if release is not None and release.lower() == "none":
        release = None
    check_device_available(args.device)
    if args.model is not None and Path(args.model).is_dir():  # a HookedViT saved by rrm
        from rrm_plugin.zoo.models import load_model_from_directory, to_device

        model = to_device(load_model_from_directory(Path(args.model)), device=args.device,
                          dtype=args.dtype)
        name = args.model
    else:
        name = resolve_model_name(args.model, release)
        model = rrm_plugin.load_model(name, device=args.device, dtype=args.dtype)
    if release is not None and Path(release).is_dir():  # SAEs saved by `rrm train-saes`
        rrm_plugin.register_sae_release(release, Path(release), model_name=name)
    saes = {}
    if with_saes and release is not None:
        saes = rrm_plugin.load_saes(release, device=args.device)
        check_saes_fit(model, saes, release=release, model_name=name)
        local = local_release_directory(release)
        if local is not None:  # SAEs trained on other model weights are refused
            check_release_provenance(local, model=model, saes=saes, release=release)
        if args.dtype is not None:
            saes = {h: s.to(DTYPES[args.dtype]) for h, s in saes.items()}
    return Workspace(model, saes, name, release, args.device)


def check_device_available(device: str) -> None:
    """`--device` (already of a valid form, `checks.check_device`) exists on this machine."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RRMUserError(f"--device {device}: CUDA is not available on this machine")
        n = torch.cuda.device_count()
        if index and int(index) >= n:
            raise RRMUserError(f"--device {device}: this machine has {n} CUDA device(s), "
                               f"cuda:0..cuda:{n - 1}")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise RRMUserError(f"--device {device}: MPS is not available on this machine")


def check_saes_fit(model, saes: dict, *, release: str, model_name: str) -> None:
    """Every SAE must fit its hook point (the replacement mode's check), named for the CLI."""
    from rrm_plugin.replacement.splice import check_sae_for_hook

    for hook, sae in saes.items():
        try:
            check_sae_for_hook(model, hook, sae)
        except (KeyError, ValueError) as err:
            raise RRMUserError(f"SAE release {release!r} does not fit model {model_name!r}: "
                               f"{err.args[0]}") from err


def predicted_labels(model, images, *, batch_size: int):
    """The model's own predicted classes, in batches: labels for unlabelled images."""
    import torch

    from rrm_plugin.runs.sharded import concat, map_batches

    @torch.no_grad()
    def batch(sl: slice) -> dict:
        return {"predicted": model(images[sl]).argmax(-1)}

    parts = map_batches(batch, n=len(images), batch_size=batch_size, name="predictions",
                        progress=False)
    return concat(parts, "predicted").to(images.device)


def model_preprocessing(model_name: str, model):
    """Named models: their own; embedded ones: exact size, [0, 1] pixels; own models: resized."""
    from dataclasses import replace

    from rrm_plugin.data.images import identity_preprocessing
    from rrm_plugin.zoo.hub_models import HUB_MODELS
    from rrm_plugin.zoo.models import MODELS

    if model_name in HUB_MODELS:
        return HUB_MODELS[model_name].preprocessing
    exact = identity_preprocessing(model.cfg.image_size)
    return exact if model_name in MODELS else replace(exact, exact_size=False)


def load_image_args(paths: list[str] | None, ws: Workspace):
    """`ImageSet` of `--images`, or the embedded model's held-out set when none are given."""
    import rrm_plugin
    from rrm_plugin.data.images import ImageSet, load_images
    from rrm_plugin.zoo.models import MODELS

    if paths:
        loaded = load_images(paths, model_preprocessing(ws.model_name, ws.model))
    elif ws.model_name in MODELS:
        test = rrm_plugin.load_test_set(ws.model_name)
        loaded = ImageSet(test.images, test.labels, [])
    else:
        raise RRMUserError(f"model {ws.model_name!r} has no embedded images: give --images")
    images = loaded.images.to(device=ws.device, dtype=next(ws.model.parameters()).dtype)
    labels = None if loaded.labels is None else loaded.labels.to(ws.device)
    return ImageSet(images, labels, loaded.files)


def resolve_baselines(baselines_path: Path | None, ws: Workspace, images):
    """Baselines by the documented order; returns `(baselines, description)`."""
    from rrm_plugin.attribution.baselines import Baselines, compute_baselines
    from rrm_plugin.zoo.baselines import cached_baselines_path, load_release_baselines
    from rrm_plugin.zoo.releases import SAE_RELEASES

    if baselines_path is not None:
        found, what = Baselines.load(baselines_path), f"file {baselines_path}"
    elif cached_baselines_path(ws.release).is_file():  # what `rrm baselines` wrote last
        path = cached_baselines_path(ws.release)
        found, what = Baselines.load(path), f"cached {path}"
    elif ws.release in SAE_RELEASES:
        found, what = load_release_baselines(ws.release), f"shipped with {ws.release}"
    elif len(images) >= 2:
        found = compute_baselines(ws.model, ws.saes, images, progress=False)
        what = f"median over the {len(images)} input images"
    else:
        n_tokens = ws.model(images[:1], stop_at_layer=0).shape[1]
        found, what = Baselines.zeros(ws.saes, n_tokens=n_tokens), "zero (one input image)"
    found.check(ws.saes, model=ws.model)
    return found.to(ws.device), what


def add_common_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
