"""Probe stimuli on the digits canvas: one factor varied, the others randomised (section 2).

Every family draws in the canvas's style (bright foreground of HSV value 1 and saturation
0.3-0.7 on a dark background of value <= 0.2, stroke alpha in [0, 1]) and varies one factor over
fixed levels while everything else is drawn at random:

- `position`: the digit's offset on a 3 x 3 grid of offsets (corners, edges, centre);
- `hue`: the foreground hue (12 levels); `tint`: the background hue (12 levels, saturated);
- `brightness`: the foreground's HSV value (6 levels from 0.3 to 1: contrast to the background);
- `digit`: the digit's identity (10 classes, held-out source digits);
- `orientation`: a straight bar (14 x 2 px) at 12 orientations over 180 degrees, no digit;
- `curve`: an arc of 14 px at 5 curvatures (straight to radius 5 px) x 8 bow directions; the
  straight level is the bar along the chord the arcs of that bow direction share.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int
from matplotlib.colors import hsv_to_rgb
from torch import Tensor

from rrm_plugin.data.digits import DigitsCanvasConfig, load_source_digits, split_indices
from rrm_plugin.errors import RRMUserError

HUES = np.arange(12) / 12
VALUES = np.linspace(0.3, 1.0, 6)
ORIENTATIONS = np.arange(12) * 15.0  # degrees
CURVATURES = np.array([0.0, 1 / 16, 1 / 10, 1 / 7, 1 / 5])  # 1 / radius in pixels
BOWS = np.arange(8) * 45.0  # degrees: direction the arc bows towards
STROKE_LENGTH, STROKE_WIDTH = 14.0, 2.0
FAMILIES = ("position", "hue", "tint", "brightness", "digit", "orientation", "curve")


class ProbeFamily(NamedTuple):
    """Images of one probe family.

    Args:
        name: Family name (one of `FAMILIES`).
        images: `[n, 3, H, W]` canvases.
        levels: `[n]` level index of the varied factor.
        level_values: Value of each level (offset, hue, degrees, ...), for plots.
        second: `[n]` second factor (the curve family's bow direction), else None.
    """

    name: str
    images: Float[Tensor, "n 3 h w"]
    levels: Int[Tensor, " n"]
    level_values: list
    second: Int[Tensor, " n"] | None = None


def _fg(rng, n, hue=None, value=None) -> np.ndarray:
    h = rng.random(n) if hue is None else hue
    v = np.ones(n) if value is None else value
    return hsv_to_rgb(np.stack([h, rng.uniform(0.3, 0.7, n), v], 1)).astype(np.float32)


def _bg(rng, n, hue=None) -> np.ndarray:
    h = rng.random(n) if hue is None else hue
    s = rng.uniform(0.0, 1.0, n) if hue is None else np.ones(n)
    v = rng.uniform(0.0, 0.2, n) if hue is None else np.full(n, 0.2)
    return hsv_to_rgb(np.stack([h, s, v], 1)).astype(np.float32)


def compose(alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> Tensor:
    """Canvas images `bg + (fg - bg) * alpha` as in the digits generator."""
    images = bg[:, :, None, None] + (fg - bg)[:, :, None, None] * alpha[:, None]
    return torch.from_numpy(images.astype(np.float32))


def digit_alpha(digits: np.ndarray, top: np.ndarray, left: np.ndarray,
                cfg: DigitsCanvasConfig) -> np.ndarray:
    """Upscaled digits pasted at the given offsets (alpha `[n, H, W]`)."""
    n, side = len(digits), 8 * cfg.scale
    big = digits.repeat(cfg.scale, axis=1).repeat(cfg.scale, axis=2)
    rows = top[:, None, None] + np.arange(side)[None, :, None]
    cols = left[:, None, None] + np.arange(side)[None, None, :]
    alpha = np.zeros((n, cfg.canvas_size, cfg.canvas_size), dtype=np.float32)
    alpha[np.arange(n)[:, None, None], rows, cols] = big
    return alpha


def bar_alpha(
    *, size: int, centre: np.ndarray, orientation_deg: np.ndarray,
    length: float = STROKE_LENGTH, width: float = STROKE_WIDTH,
) -> np.ndarray:
    """Anti-aliased straight bars `[n, size, size]` running along `orientation_deg`.

    The orientation is measured from the image's x axis towards its y axis (which points down);
    `centre` is the bar's middle in pixels `(x, y)`.
    """
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    theta = np.deg2rad(orientation_deg)[:, None, None]
    dx, dy = xx[None] - centre[:, 0, None, None], yy[None] - centre[:, 1, None, None]
    across = -dx * np.sin(theta) + dy * np.cos(theta)
    along = dx * np.cos(theta) + dy * np.sin(theta)
    bar = (np.abs(along) <= length / 2) * np.clip(width / 2 + 0.5 - np.abs(across), 0, 1)
    return bar.astype(np.float32)


def arc_alpha(
    *, size: int, centre: np.ndarray, bow_deg: np.ndarray, curvature: np.ndarray,
    length: float = STROKE_LENGTH, width: float = STROKE_WIDTH,
) -> np.ndarray:
    """Anti-aliased circular arcs of arc length `length` `[n, size, size]`.

    The arc's middle lies at `centre` and it bows towards `bow_deg` (its circle's centre lies
    `1 / curvature` px the other way), so its chord runs perpendicular to `bow_deg`. Curvature 0
    is the limit of vanishing curvature: the straight bar along the chord, at `bow_deg + 90`.
    """
    if (curvature < 0).any():
        raise RRMUserError(f"curvatures must be >= 0 (the bow direction gives the side), got "
                         f"{curvature[curvature < 0][:3].tolist()}")
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    theta = np.deg2rad(bow_deg)[:, None, None]
    kappa = curvature[:, None, None]
    radius = 1 / np.where(kappa > 0, kappa, 1.0)
    cx = centre[:, 0, None, None] - radius * np.cos(theta)
    cy = centre[:, 1, None, None] - radius * np.sin(theta)
    rx, ry = xx[None] - cx, yy[None] - cy
    dist = np.abs(np.hypot(rx, ry) - radius)
    ang = np.angle((rx + 1j * ry) * np.exp(-1j * theta))  # 0 at the arc's middle
    arc = (np.abs(ang) * radius <= length / 2) * np.clip(width / 2 + 0.5 - dist, 0, 1)
    bar = bar_alpha(size=size, centre=centre, orientation_deg=bow_deg + 90.0, length=length,
                    width=width)
    return np.where(kappa > 0, arc, bar).astype(np.float32)


def probe_families(
    cfg: DigitsCanvasConfig, *, repeats: int = 18, seed: int = 0
) -> dict[str, ProbeFamily]:
    """All probe families (`repeats` images per level; the curve family per curvature x bow)."""
    if repeats < 2:
        raise RRMUserError(f"repeats must be >= 2 (variance within levels), got {repeats}")
    rng = np.random.default_rng(seed)
    digits, labels = load_source_digits()
    _, test_idx = split_indices(cfg, len(digits))
    span = cfg.canvas_size - 8 * cfg.scale

    def random_digits(n):
        idx = rng.choice(test_idx, n)
        return digits[idx], labels[idx]

    def random_offsets(n):
        return rng.integers(0, span + 1, n), rng.integers(0, span + 1, n)

    def family(name, n_levels, values):
        levels = np.repeat(np.arange(n_levels), repeats)
        return levels, values, len(levels)

    out = {}
    # Position: 3 x 3 grid of offsets.
    grid = [(t, left) for t in (0, span // 2, span) for left in (0, span // 2, span)]
    levels, _, n = family("position", 9, grid)
    top = np.array([grid[i][0] for i in levels])
    left = np.array([grid[i][1] for i in levels])
    alpha = digit_alpha(random_digits(n)[0], top, left, cfg)
    out["position"] = ProbeFamily("position", compose(alpha, _fg(rng, n), _bg(rng, n)),
                                  torch.from_numpy(levels), [list(g) for g in grid])
    # Foreground hue, background tint, brightness: digits at random places.
    for name, values in (("hue", HUES), ("tint", HUES), ("brightness", VALUES)):
        levels, _, n = family(name, len(values), values)
        alpha = digit_alpha(random_digits(n)[0], *random_offsets(n), cfg)
        fg = _fg(rng, n, hue=values[levels] if name == "hue" else None,
                 value=values[levels] if name == "brightness" else None)
        bg = _bg(rng, n, hue=values[levels] if name == "tint" else None)
        out[name] = ProbeFamily(name, compose(alpha, fg, bg), torch.from_numpy(levels),
                                [float(v) for v in values])
    # Digit identity: `repeats` held-out examples of each class.
    levels = np.repeat(np.arange(10), repeats)
    pool = [test_idx[labels[test_idx] == c] for c in range(10)]
    chosen = np.concatenate([rng.choice(pool[c], repeats) for c in range(10)])
    alpha = digit_alpha(digits[chosen], *random_offsets(len(levels)), cfg)
    n = len(levels)
    out["digit"] = ProbeFamily("digit", compose(alpha, _fg(rng, n), _bg(rng, n)),
                               torch.from_numpy(levels), list(range(10)))
    # Bars and arcs, centred in the middle third of the canvas.
    size = cfg.canvas_size

    def centres(n):
        return rng.uniform(size / 3, 2 * size / 3, (n, 2))

    levels, _, n = family("orientation", len(ORIENTATIONS), ORIENTATIONS)
    alpha = bar_alpha(size=size, centre=centres(n), orientation_deg=ORIENTATIONS[levels])
    out["orientation"] = ProbeFamily("orientation", compose(alpha, _fg(rng, n), _bg(rng, n)),
                                     torch.from_numpy(levels), [float(v) for v in ORIENTATIONS])
    n_rep = max(2, math.ceil(repeats / 3))
    curv = np.repeat(np.arange(len(CURVATURES)), len(BOWS) * n_rep)
    bow = np.tile(np.repeat(np.arange(len(BOWS)), n_rep), len(CURVATURES))
    n = len(curv)
    alpha = arc_alpha(size=size, centre=centres(n), bow_deg=BOWS[bow],
                      curvature=CURVATURES[curv])
    out["curve"] = ProbeFamily("curve", compose(alpha, _fg(rng, n), _bg(rng, n)),
                               torch.from_numpy(curv), [float(v) for v in CURVATURES],
                               second=torch.from_numpy(bow))
    return out
