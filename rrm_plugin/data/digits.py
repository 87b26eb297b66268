"""Coloured, translated handwritten digits on a canvas, built from scikit-learn's real 8x8 digits.

Each digit is upscaled (nearest neighbour) and pasted at a random position on a dark canvas of
random tint, drawn in a bright colour of random hue, so that position and colour vary and an SAE
can find features for them. The generator also returns which patches the digit covers, used
downstream as an object mask (context vs. object tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from matplotlib.colors import hsv_to_rgb
from torch import Tensor

from rrm_plugin.errors import RRMUserError


@dataclass(frozen=True)
class DigitsCanvasConfig:
    """How digits are drawn onto the canvas.

    Args:
        canvas_size: Side of the square RGB canvas in pixels.
        scale: Integer upscaling of the 8x8 source digit (nearest neighbour).
        patch_size: Side of a ViT patch; used for the per-patch object mask.
        test_fraction: Share of the 1,797 source digits held out for testing.
        split_seed: Seed of the fixed train/test split of source digits.
        test_render_seed: Seed of the fixed placement and colours of the test images.
    """

    canvas_size: int = 32
    scale: int = 2
    patch_size: int = 4
    test_fraction: float = 0.2
    split_seed: int = 0
    test_render_seed: int = 1

    def __post_init__(self) -> None:
        if self.canvas_size % self.patch_size:
            raise RRMUserError(
                f"canvas_size {self.canvas_size} must be a multiple of patch_size {self.patch_size}"
            )
        if 8 * self.scale > self.canvas_size:
            raise RRMUserError(
                f"digit of {8 * self.scale}px does not fit canvas {self.canvas_size}px"
            )


# The canvas of the embedded digits models (24x24 RGB, digit upscaled 2x, 4-pixel patches).
DIGITS_DATA = DigitsCanvasConfig(canvas_size=24, scale=2, patch_size=4)


class DigitsBatch(NamedTuple):
    """Rendered images with their labels and the patches each digit covers."""

    images: Float[Tensor, "batch 3 height width"]
    labels: Int[Tensor, " batch"]
    object_mask: Bool[Tensor, "batch n_patches"]
    """True where a patch (row-major, CLS excluded) contains any digit pixel."""
    source_index: Int[Tensor, " batch"]
    """Index of the source digit in scikit-learn's `load_digits()`."""


def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 real 8x8 digits shipped with scikit-learn, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_indices(cfg: DigitsCanvasConfig, n_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, seeded train/test split of source digit indices."""
    perm = np.random.default_rng(cfg.split_seed).permutation(n_total)
    n_test = int(round(cfg.test_fraction * n_total))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _random_colours(rng: np.random.Generator, n: int, hues: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    # Bright foreground of any hue, dark background of any tint: colour varies but the digit
    # always stands out (fully random pairs kept a small ViT at chance in a trial).
    # Saturation <= 0.7 at value 1 keeps every foreground channel >= 0.3, so the digit is brighter
    # than any background in every colour (a linear patch embedding can separate them).
    fg_hsv = np.stack([rng.random(n), rng.uniform(0.3, 0.7, n), np.ones(n)], 1)
    if hues is not None:  # drawn all the same, so the rest of the stream does not shift
        fg_hsv[:, 0] = hues
    bg_hsv = np.stack([rng.random(n), rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 0.2, n)], 1)
    return hsv_to_rgb(fg_hsv).astype(np.float32), hsv_to_rgb(bg_hsv).astype(np.float32)


def render(
    digits: Float[np.ndarray, "batch 8 8"],
    *,
    cfg: DigitsCanvasConfig,
    rng: np.random.Generator,
    hues: Float[np.ndarray, " batch"] | None = None,
) -> tuple[Float[np.ndarray, "batch 3 H W"], Bool[np.ndarray, "batch n_patches"]]:
    """Paste upscaled digits at random positions with random colours (with `hues`, the digits'
    hues are these instead of random); return images and masks."""
    n = digits.shape[0]
    side = 8 * cfg.scale
    big = digits.repeat(cfg.scale, axis=1).repeat(cfg.scale, axis=2)  # [n, side, side]
    max_offset = cfg.canvas_size - side
    top = rng.integers(0, max_offset + 1, n)
    left = rng.integers(0, max_offset + 1, n)
    # Scatter all digits at once: build per-image row/col index grids.
    rows = top[:, None, None] + np.arange(side)[None, :, None]
    cols = left[:, None, None] + np.arange(side)[None, None, :]
    alpha = np.zeros((n, cfg.canvas_size, cfg.canvas_size), dtype=np.float32)
    alpha[np.arange(n)[:, None, None], rows, cols] = big
    fg, bg = _random_colours(rng, n, hues)
    images = bg[:, :, None, None] + (fg - bg)[:, :, None, None] * alpha[:, None]
    g = cfg.canvas_size // cfg.patch_size
    per_patch = alpha.reshape(n, g, cfg.patch_size, g, cfg.patch_size).max(axis=(2, 4))
    return images.astype(np.float32), (per_patch > 0).reshape(n, g * g)


def _batch(
    images: np.ndarray, masks: np.ndarray, labels: np.ndarray, idx: np.ndarray
) -> DigitsBatch:
    return DigitsBatch(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        object_mask=torch.from_numpy(masks),
        source_index=torch.from_numpy(idx.astype(np.int64)),
    )


def held_out_set(cfg: DigitsCanvasConfig = DigitsCanvasConfig()) -> DigitsBatch:
    """The fixed held-out images: held-out source digits with fixed, seeded placement and colour."""
    digits, labels = load_source_digits()
    _, test_idx = split_indices(cfg, len(digits))
    rng = np.random.default_rng(cfg.test_render_seed)
    images, masks = render(digits[test_idx], cfg=cfg, rng=rng)
    return _batch(images, masks, labels[test_idx], test_idx)


def train_sampler(cfg: DigitsCanvasConfig, *, seed: int):
    """Infinite seeded stream of training batches: fresh placement and colours on every draw."""
    digits, labels = load_source_digits()
    train_idx, _ = split_indices(cfg, len(digits))
    rng = np.random.default_rng(seed)

    def sample(batch_size: int) -> DigitsBatch:
        idx = train_idx[rng.integers(0, len(train_idx), batch_size)]
        images, masks = render(digits[idx], cfg=cfg, rng=rng)
        return _batch(images, masks, labels[idx], idx)

    return sample
