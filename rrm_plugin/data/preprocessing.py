"""How an image file becomes a model input: resize, crop and normalisation of a model family."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rrm_plugin.errors import RRMUserError


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a model input.

    Args:
        size: Resize target: an int resizes the shorter side (then `crop` centre-crops), a pair
            `(h, w)` resizes to exactly that size.
        crop: Centre-crop side after resizing (None: no crop).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel std divided by.
        interpolation: `"bilinear"` or `"bicubic"`: PIL's filters, applied to the 8-bit image
            (as the upstream pipelines do, so the pixels match theirs exactly).
        exact_size: Refuse images whose size is not `size` instead of resizing them (models
            trained on small renders, where resizing a photo gives a meaningless input).
        crop_rounding: How centre-crop offsets are rounded: `"floor"` (transformers) or
            `"round"` (torchvision's `CenterCrop`, used by open_clip).
        background: RGB in [0, 1] that transparent pixels are composited over (white, as
            transformers' `convert_to_rgb` does for these models' processors).
    """

    size: int | tuple[int, int]
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    exact_size: bool = False
    crop_rounding: str = "floor"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.crop_rounding not in ("floor", "round"):
            raise RRMUserError(
                f"crop_rounding must be 'floor' or 'round', got {self.crop_rounding!r}")
        if len(self.background) != 3 or not all(0 <= c <= 1 for c in self.background):
            raise RRMUserError(f"background must be RGB in [0, 1], got {self.background!r}")

    def to_json_dict(self) -> dict:
        return {"size": self.size, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation,
                "crop_rounding": self.crop_rounding, "background": list(self.background)}

    def to_display(self, images: Tensor) -> Tensor:
        """Undo the normalisation: model inputs back to [0, 1] RGB."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype)[:, None, None]
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype)[:, None, None]
        return (images * std + mean).clamp(0, 1)

    @property
    def input_range(self) -> tuple[float, float]:
        """Range of a preprocessed pixel (from [0, 1] inputs)."""
        lo = min((0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        hi = max((1 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        return lo, hi
