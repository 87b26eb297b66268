"""Image files and folders as model inputs, preprocessed as the model expects.

Files are decoded with PIL (PNG, JPEG, ...) and converted to RGB. A folder of images gives no
labels; a folder of class folders (torchvision's ImageFolder layout) gives labels: the folder name
itself when every name is an integer, else the index of the name in sorted order (as ImageFolder;
for ImageNet synset folders that is the standard class index).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rrm_plugin.data.preprocessing import Preprocessing
from rrm_plugin.errors import MissingFileError, RRMUserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageSet(NamedTuple):
    images: Float[Tensor, "n c h w"]
    labels: Int[Tensor, " n"] | None
    files: list[str]


class ImageFileError(RRMUserError):
    """An image path that is missing, unreadable or not an image."""


def identity_preprocessing(image_size: int) -> Preprocessing:
    """Images of exactly the model's size, pixels kept in [0, 1] (the embedded digits models)."""
    return Preprocessing(size=(image_size, image_size), crop=None, mean=(0.0,) * 3, std=(1.0,) * 3,
                         exact_size=True)


def read_image(path: Path) -> Float[Tensor, "3 h w"]:
    """An image file as RGB floats in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no image file {path}")
    try:
        with Image.open(path) as handle:
            rgb = handle.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageFileError(f"{path} is not a readable image file ({err})") from err
    import numpy as np

    array = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float() / 255.0


def preprocess(image: Float[Tensor, "3 h w"], preprocessing: Preprocessing
               ) -> Float[Tensor, "3 hh ww"]:
    """Resize (and centre-crop), then normalise, with torchvision's functional transforms."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[
        preprocessing.interpolation]
    size = preprocessing.size
    target = list(size) if isinstance(size, tuple) else [size]
    if not (isinstance(size, tuple) and tuple(image.shape[1:]) == tuple(size)):
        image = TF.resize(image, target, interpolation=mode, antialias=True)
    if preprocessing.crop is not None:
        # CLIPProcessor (the authors' pipeline) rounds the offsets down; torchvision's
        # CenterCrop (open_clip's pipeline) rounds them: one pixel apart for odd margins.
        crop = preprocessing.crop
        h, w = image.shape[-2:]
        if h < crop or w < crop:
            raise ImageFileError(f"image resized to {h}x{w} is smaller than the {crop} crop")
        if preprocessing.crop_rounding == "round":
            top, left = int(round((h - crop) / 2)), int(round((w - crop) / 2))
        else:
            top, left = (h - crop) // 2, (w - crop) // 2
        image = image[..., top : top + crop, left : left + crop]
    image = image.clamp(0, 1) if mode == InterpolationMode.BICUBIC else image
    return TF.normalize(image, list(preprocessing.mean), list(preprocessing.std))


def _read_sized(path: Path, preprocessing: Preprocessing) -> Float[Tensor, "3 h w"]:
    image = read_image(path)
    if preprocessing.exact_size and tuple(image.shape[1:]) != tuple(preprocessing.size):
        h, w = image.shape[1:]
        raise ImageFileError(f"{path} is {h}x{w} pixels, model expects "
                             f"{preprocessing.size[0]}x{preprocessing.size[1]}")
    return image


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def collect_image_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[int] | None]:
    """Image files named by `paths` (files, folders or ImageFolder trees) and labels if any."""
    files: list[Path] = []
    labels: list[int] | None = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
            labels = None
        elif path.is_dir():
            classes = sorted(p for p in path.iterdir() if p.is_dir())
            if classes and not _images_in(path):
                numeric = all(c.name.isdigit() for c in classes)
                for index, folder in enumerate(classes):
                    found = _images_in(folder)
                    files += found
                    if labels is not None:
                        labels += [int(folder.name) if numeric else index] * len(found)
            else:
                files += _images_in(path)
                labels = None
        else:
            raise MissingFileError(f"no image file or folder {path}")
    if not files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise ImageFileError(f"no image files ({suffixes}) in {list(map(str, paths))}")
    return files, labels


def load_images(paths: Sequence[str | Path], preprocessing: Preprocessing) -> ImageSet:
    """Load and preprocess images from files / folders (see module doc for labels)."""
    files, labels = collect_image_files(paths)
    images = torch.stack([preprocess(_read_sized(f, preprocessing), preprocessing) for f in files])
    label_tensor = None if labels is None else torch.tensor(labels)
    return ImageSet(images, label_tensor, [str(f) for f in files])
