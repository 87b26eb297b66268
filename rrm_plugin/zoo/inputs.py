"""What a loaded model's inputs look like: its preprocessing, image files, held-out images, classes.

A model loaded by `load_model(name)` (or from a folder) records its name (`model_name_of`); the
functions here look everything up by it. A model built another way has no name: give its
`preprocessing=` explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from torch import Tensor, nn

from rrm_plugin.data.images import ImageSet, identity_preprocessing
from rrm_plugin.data.images import load_images as load_image_files
from rrm_plugin.data.preprocessing import Preprocessing
from rrm_plugin.errors import RRMUserError
from rrm_plugin.zoo.datasets import load_test_set
from rrm_plugin.zoo.hub_models import HUB_MODELS
from rrm_plugin.zoo.models import MODELS, model_name_of


def model_preprocessing(model: nn.Module, *, name: str | None = None) -> Preprocessing:
    """Named models: their own; embedded ones: exact size, [0, 1] pixels; own models: resized.

    `name` overrides the name recorded on the model (`load_model` records it).
    """
    name = name or model_name_of(model)
    if name is None:
        raise RRMUserError(
            "this model was not loaded by name (rrm_plugin.load_model), so its preprocessing is "
            "unknown: give preprocessing=rrm_plugin.Preprocessing(size=..., crop=..., mean=..., "
            "std=...)")
    if name in HUB_MODELS:
        return HUB_MODELS[name].preprocessing
    exact = identity_preprocessing(model.cfg.image_size)
    return exact if name in MODELS else replace(exact, exact_size=False)


def load_images(paths: str | Path | Sequence[str | Path], *, model: nn.Module | None = None,
                preprocessing: Preprocessing | None = None) -> ImageSet:
    """Image files and folders as inputs of `model`: `ImageSet(images, labels, files)`.

    Each image is preprocessed as the model expects (`model_preprocessing`, or `preprocessing`
    when given) and the set is moved to the model's device and dtype. A folder of class folders
    gives labels (see `rrm_plugin.data.images`); otherwise `labels` is None.
    """
    if model is None and preprocessing is None:
        raise RRMUserError("load_images needs model= (a model loaded by rrm_plugin.load_model) or "
                           "preprocessing=")
    if isinstance(paths, str | Path):
        paths = [paths]
    loaded = load_image_files(paths, preprocessing or model_preprocessing(model))
    if model is None:
        return loaded
    weight = next(model.parameters())
    images = loaded.images.to(device=weight.device, dtype=weight.dtype)
    labels = None if loaded.labels is None else loaded.labels.to(weight.device)
    return ImageSet(images, labels, loaded.files)


def held_out_images(model: nn.Module) -> Tensor | None:
    """The held-out test images of an embedded model (on its device, in its dtype), else None."""
    name = model_name_of(model)
    if name not in MODELS:
        return None
    weight = next(model.parameters())
    return load_test_set(name).images.to(weight.device, weight.dtype)


def class_names_of(model: nn.Module) -> list[str] | None:
    """The class names of a named hub model (e.g. ImageNet's), else None."""
    name = model_name_of(model)
    return HUB_MODELS[name].class_names() if name in HUB_MODELS else None


def display_of(model: nn.Module):
    """Model inputs back to [0, 1] RGB (undoing the normalisation) for a named model, else None."""
    return model_preprocessing(model).to_display if model_name_of(model) is not None else None
