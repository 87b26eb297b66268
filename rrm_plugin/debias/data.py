"""A split of a spurious-correlation benchmark: images, labels and the class the cue names."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rrm_plugin.data.spurious import group_index
from rrm_plugin.errors import RRMUserError


class SpuriousSplit(NamedTuple):
    """Images with their labels and, per image, the class its spurious cue points to.

    Any benchmark fits: for Waterbirds the cue is the background and `spurious` is the class
    whose habitat it shows. Groups are class x (cue agrees with the label / disagrees).
    """

    images: Float[Tensor, "batch c h w"]
    labels: Int[Tensor, " batch"]
    spurious: Int[Tensor, " batch"]

    @property
    def conflicting(self) -> Bool[Tensor, " batch"]:
        """Bias-conflicting images: the cue names another class."""
        return self.spurious != self.labels

    @property
    def groups(self) -> Int[Tensor, " batch"]:
        """`2 * label + conflicting`."""
        return group_index(self.labels, self.spurious)

    def subset(self, index: Tensor) -> SpuriousSplit:
        return SpuriousSplit(self.images[index], self.labels[index], self.spurious[index])

    def check(self, *, name: str, n_classes: int | None = None) -> SpuriousSplit:
        """Raise a ValueError naming the split unless shapes, ranges and values are sound."""
        n = len(self.images)
        if self.images.ndim != 4:
            raise RRMUserError(f"{name} images must be [n, channels, height, width], got shape "
                               f"{tuple(self.images.shape)}")
        for field in ("labels", "spurious"):
            values = getattr(self, field)
            if values.shape != (n,):
                raise RRMUserError(f"{name} {field} must have shape ({n},) like its images, got "
                                   f"{tuple(values.shape)}")
            if values.is_floating_point() or values.dtype == torch.bool:
                raise RRMUserError(f"{name} {field} must be integer class indices, got "
                                   f"{values.dtype}")
            if n_classes is not None and n and (values.min() < 0 or values.max() >= n_classes):
                raise RRMUserError(f"{name} {field} must be classes in [0, {n_classes}), got "
                                   f"values in [{int(values.min())}, {int(values.max())}]")
        if not torch.isfinite(self.images).all():
            raise RRMUserError(f"{name} images contain NaN or inf")
        if n == 0:
            raise RRMUserError(f"{name} split is empty")
        return self


def from_batch(batch) -> SpuriousSplit:
    """A `digits-spurious` batch (`rrm_plugin.data.spurious.SpuriousBatch`) as a split."""
    return SpuriousSplit(batch.images, batch.labels, batch.markers)
