"""The images a run works on: files and folders, or an embedded model's held-out set.

`dataset_images` is what the dataset commands' `--images` means (default: the held-out set of an
embedded model), `traced_image` what `rrm trace IMAGE` means (a held-out index or a file), and
`predicted_labels` stands in for the labels of unlabelled images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rrm_plugin.data.images import ImageSet
from rrm_plugin.errors import OutOfRangeError, RRMUserError
from rrm_plugin.runs.sharded import concat, map_batches
from rrm_plugin.zoo.datasets import load_test_set, training_sampler
from rrm_plugin.zoo.inputs import load_images
from rrm_plugin.zoo.models import MODELS, model_name_of


def dataset_images(paths: Sequence[str | Path] | None, model: nn.Module) -> ImageSet:
    """`ImageSet` of image files / folders (the model's preprocessing), or, when `paths` is
    empty, the embedded model's held-out set (with labels, no files); on the model's device."""
    if paths:
        return load_images(paths, model=model)
    name = model_name_of(model)
    if name not in MODELS:
        raise RRMUserError(f"model {name!r} has no embedded images: give --images")
    test = load_test_set(name)
    weight = next(model.parameters())
    return ImageSet(test.images.to(device=weight.device, dtype=weight.dtype),
                    test.labels.to(weight.device), [])


def traced_image(spec: str | int, model: nn.Module) -> tuple[Tensor, dict[str, Any]]:
    """`(image [c, h, w], metadata)` for a held-out index (an int or digits) or an image file."""
    name = model_name_of(model)
    if isinstance(spec, int) or spec.lstrip("-").isdigit():
        if name not in MODELS:
            raise RRMUserError(f"an image index needs an embedded model; {name!r} has no "
                               "held-out set: give an image file")
        test = load_test_set(name)
        index, n = int(spec), len(test.labels)
        if not 0 <= index < n:
            raise OutOfRangeError(f"image index {index} out of range: the held-out set of "
                                  f"{name} has {n} images (0..{n - 1})")
        weight = next(model.parameters())
        image = test.images[index].to(weight.device, weight.dtype)
        return image, {"test_index": index, "label": int(test.labels[index])}
    loaded = load_images([spec], model=model)
    if len(loaded.images) != 1:
        raise RRMUserError(f"{spec} names {len(loaded.images)} images; trace takes one image file")
    return loaded.images[0], {"file": str(spec)}


def reference_renders(paths: Sequence[str | Path] | None, model: nn.Module, *, n_images: int,
                      seed: int) -> tuple[Tensor, str]:
    """What `rrm baselines` takes the statistic over, and one line naming it: the image files,
    else `n_images` fresh renders of the embedded model's training data."""
    if paths:
        images = load_images(paths, model=model).images
        return images, f"{len(images)} images"
    name = model_name_of(model)
    if name not in MODELS:
        raise RRMUserError(f"model {name!r} has no embedded data: give --images "
                           "(the paper uses the ImageNet-1k training set)")
    images = training_sampler(name, seed=seed)(n_images).images
    return images.to(next(model.parameters()).device), f"{n_images} renders"


def predicted_labels(model: nn.Module, images: Tensor, *, batch_size: int) -> Tensor:
    """The model's own predicted classes, in batches: labels for unlabelled images."""

    @torch.no_grad()
    def batch(sl: slice) -> dict:
        return {"predicted": model(images[sl]).argmax(-1)}

    parts = map_batches(batch, n=len(images), batch_size=batch_size, name="predictions",
                        progress=False)
    return concat(parts, "predicted").to(images.device)
