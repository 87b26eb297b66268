"""A model and its SAEs named the way the `rrm` commands name them: by name or by folder.

`load_workspace(model=..., release=...)` is what every command's `--model` / `--release` /
`--device` / `--dtype` mean: a model name or a folder saved by `save_model`, a release name, a
folder written by `rrm train-saes`, or None (no SAEs); the model defaults to the release's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from rrm_plugin.errors import RRMUserError
from rrm_plugin.provenance import check_release_provenance
from rrm_plugin.saes.registry import local_release_directory, register_sae_release
from rrm_plugin.zoo.models import (
    DTYPES,
    load_model,
    load_model_from_directory,
    remember_model_name,
    to_device,
)
from rrm_plugin.zoo.releases import check_saes_fit, load_saes, release_model_name


class Workspace(NamedTuple):
    model: Any
    saes: dict
    model_name: str
    release: str | None
    device: str


def resolve_model_name(model: str | None, release: str | None) -> str:
    """The model to load: `model`, else the model of a named `release`, else `digits-vit`."""
    if model is not None:
        return model
    if release is None:
        return "digits-vit"
    if Path(release).is_dir():
        raise RRMUserError(f"--release {release} is a folder of your own SAEs: give --model too")
    return release_model_name(release)


def check_device_available(device: str) -> None:
    """`device` (already of a valid form, `cli.checks.check_device`) exists on this machine."""
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


def load_workspace(*, model: str | None, release: str | None, device: str = "cpu",
                   dtype: str | None = None, with_saes: bool = True) -> Workspace:
    """The model and SAEs named by `model` / `release`, on `device` in `dtype`.

    `release` "none" (any case) or None: no SAEs. Folder releases are registered under their
    folder path; SAEs trained on other model weights are refused (`ProvenanceError`).
    """
    if release is not None and release.lower() == "none":
        release = None
    check_device_available(device)
    if model is not None and Path(model).is_dir():  # a HookedViT saved by rrm
        loaded = to_device(load_model_from_directory(Path(model)), device=device, dtype=dtype)
        name = model
        remember_model_name(loaded, name)  # as given, so the metadata names it the same way
    else:
        name = resolve_model_name(model, release)
        loaded = load_model(name, device=device, dtype=dtype)
    if release is not None and Path(release).is_dir():  # SAEs saved by `rrm train-saes`
        register_sae_release(release, Path(release), model_name=name)
    saes = {}
    if with_saes and release is not None:
        saes = load_saes(release, device=device)
        check_saes_fit(loaded, saes, release=release, model_name=name)
        local = local_release_directory(release)
        if local is not None:  # SAEs trained on other model weights are refused
            check_release_provenance(local, model=loaded, saes=saes, release=release)
        if dtype is not None:
            saes = {h: s.to(DTYPES[dtype]) for h, s in saes.items()}
    return Workspace(loaded, saes, name, release, device)
