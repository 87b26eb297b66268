"""Image files and folders as model inputs, preprocessed as the model expects.

Files are decoded with PIL (PNG, JPEG, ...) into RGB in [0, 1] by `image_files.read_image`
(16-bit and palette images at their real range, transparency composited over the
preprocessing's background, oversized files refused from their header), then quantised to 8 bits
and resized with PIL as the upstream pipelines do (`preprocess`). A folder of images gives no
labels; a folder of class folders (torchvision's ImageFolder layout) gives labels: the folder name
itself when every name is an integer, else the index of the name in sorted order (as ImageFolder;
for ImageNet synset folders that is the standard class index).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from rrm_plugin.data.image_files import BLACK, MAX_IMAGE_PIXELS, ImageFileError, read_image
from rrm_plugin.data.preprocessing import Preprocessing
from rrm_plugin.errors import MissingFileError

__all__ = ["BLACK", "MAX_IMAGE_PIXELS", "IMAGE_SUFFIXES", "ImageFileError", "ImageSet",
           "collect_image_files", "identity_preprocessing", "load_images", "preprocess",
           "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageSet(NamedTuple):
    images: Float[Tensor, "n c h w"]
    labels: Int[Tensor, " n"] | None
    files: list[str]


def identity_preprocessing(image_size: int) -> Preprocessing:
    """Images of exactly the model's size, pixels kept in [0, 1] (the embedded digits models).

    Transparency is composited over black: the digits are drawn on a dark canvas.
    """
    return Preprocessing(size=(image_size, image_size), crop=None, mean=(0.0,) * 3, std=(1.0,) * 3,
                         exact_size=True, background=BLACK)


def resized_size(h: int, w: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """The (h, w) a resize to `size` gives: a pair as is; an int for the shorter side, the longer
    side scaled and truncated (torchvision's `Resize` and transformers' shortest-edge resize)."""
    if isinstance(size, tuple):
        return size
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def preprocess(image: UInt8[Tensor, "3 h w"], preprocessing: Preprocessing
               ) -> Float[Tensor, "3 hh ww"]:
    """Resize (and centre-crop) the 8-bit pixels with PIL, then scale to [0, 1] and normalise.

    This is what the models' upstream pipelines do (torchvision transforms on PIL images, open_clip,
    transformers' PIL image processors): PIL resizes the 8-bit image, so the model sees exactly
    the pixels upstream gives it. Resizing floats instead differs by up to about 0.05 after
    normalisation.
    """
    import numpy as np
    from PIL import Image

    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise TypeError(f"preprocess takes 8-bit RGB pixels [3, h, w] (torch.uint8, as read_image "
                        f"gives), got {image.dtype} {list(image.shape)}")
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[
        preprocessing.interpolation]
    h, w = image.shape[1:]
    out_h, out_w = resized_size(h, w, preprocessing.size)
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    if (out_h, out_w) != (h, w):
        pil = pil.resize((out_w, out_h), resample=resample)
    pixels = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)
    if preprocessing.crop is not None:
        # transformers' centre crop rounds the offsets down; torchvision's CenterCrop (open_clip's
        # pipeline) rounds them: one pixel apart for odd margins.
        crop = preprocessing.crop
        if out_h < crop or out_w < crop:
            raise ImageFileError(
                f"image resized to {out_h}x{out_w} is smaller than the {crop} crop")
        if preprocessing.crop_rounding == "round":
            top, left = int(round((out_h - crop) / 2)), int(round((out_w - crop) / 2))
        else:
            top, left = (out_h - crop) // 2, (out_w - crop) // 2
        pixels = pixels[:, top : top + crop, left : left + crop]
    # As torchvision's ToTensor and Normalize: float32 x / 255, then (x - mean) / std.
    x = pixels.float().div(255)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(preprocessing.std, dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std)


def _read_sized(path: Path, preprocessing: Preprocessing) -> UInt8[Tensor, "3 h w"]:
    # An exact-size model refuses other sizes from the header, before decoding.
    size = tuple(preprocessing.size) if preprocessing.exact_size else None
    image = read_image(path, background=preprocessing.background, size=size)
    # Upstream pipelines resize 8-bit pixels: an 8-bit file comes back exactly (k / 255 * 255
    # rounds to k); 16-bit files and composited transparency are quantised to 8 bits here.
    return image.mul(255).round().to(torch.uint8)


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
