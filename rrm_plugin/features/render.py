"""Pictures of feature activations: highlighted top images, heat maps, contact sheets, PNG URIs.

Everything is drawn with numpy on whole batches of tiles (no matplotlib axes per feature), so a
contact sheet of hundreds of features takes a fraction of a second.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import Tensor

from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import _atomic

DIM = 0.3  # brightness of patches where the feature does not fire


def display_images(images: Float[Tensor, "n 3 h w"]) -> Float[Tensor, "n 3 h w"]:
    """Per-image min-max to [0, 1], so normalised model inputs display as pictures."""
    flat = images.detach().float().flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = (hi - lo).clamp_min(1e-12)
    return ((images.float() - lo[:, None, None, None]) / scale[:, None, None, None]).clamp(0, 1)


def patch_grid(maps: Float[Tensor, "... tokens"], *, n_prefix: int) -> Tensor:
    """Patch activations `[..., g, g]` from per-token activations (prefix tokens dropped)."""
    patches = maps[..., n_prefix:]
    g = math.isqrt(patches.shape[-1])
    if g * g != patches.shape[-1]:
        raise RRMUserError(
            f"{patches.shape[-1]} patch tokens after {n_prefix} prefix tokens do not "
            "form a square grid")
    return patches.reshape(*patches.shape[:-1], g, g)


def _upsample(grid: Tensor, size: int) -> Tensor:
    return F.interpolate(grid[:, None].float(), size=(size, size), mode="nearest")[:, 0]


def highlight(
    images: Float[Tensor, "n 3 h w"], grids: Float[Tensor, "n g g"], *, size: int,
    vmax: Float[Tensor, " n"] | None = None,
) -> Float[Tensor, "n size size 3"]:
    """Images with firing patches kept bright and tinted by activation, the others dimmed."""
    pics = F.interpolate(images.float(), size=(size, size), mode="nearest")
    pics = pics.permute(0, 2, 3, 1)
    heat = _upsample(grids, size)
    vmax = heat.flatten(1).amax(1) if vmax is None else vmax.float()
    level = (heat / vmax.clamp_min(1e-12)[:, None, None]).clamp(0, 1)
    tint = torch.tensor([1.0, 0.25, 0.1])
    firing = (heat > 0).float()[..., None]
    lit = pics * (1 - 0.5 * level[..., None]) + tint * 0.5 * level[..., None]
    return firing * lit + (1 - firing) * pics * DIM


def heat_map(grids: Float[Tensor, "n g g"], *, size: int,
             vmax: Float[Tensor, " n"] | None = None) -> Float[Tensor, "n size size 3"]:
    """Activation over patches in the inferno colour map (0 = black, vmax = yellow)."""
    heat = _upsample(grids, size)
    vmax = heat.flatten(1).amax(1) if vmax is None else vmax.float()
    level = (heat / vmax.clamp_min(1e-12)[:, None, None]).clamp(0, 1)
    return torch.from_numpy(colormaps["inferno"](level.numpy())[..., :3]).float()


def to_uint8(tiles: Tensor) -> np.ndarray:
    return (tiles.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_data_uri(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(array)).decode("ascii")


def write_png(path: Path, array: np.ndarray) -> Path:
    return _atomic(Path(path), lambda tmp: tmp.write_bytes(png_bytes(array)))


def contact_sheet(
    tiles: Float[Tensor, "features per tile tile 3"],
    labels: list[str],
    *,
    columns: int = 16,
    per_row: int = 4,
    label_height: int = 12,
    gap: int = 4,
) -> np.ndarray:
    """One cell per feature (its top images side by side in rows of `per_row`, a label above)."""
    n, per, tile = tiles.shape[:3]
    rows_in_cell = math.ceil(per / per_row)
    cell_w = per_row * tile
    cell_h = rows_in_cell * tile + label_height
    n_rows = math.ceil(n / columns)
    sheet = np.full((n_rows * (cell_h + gap) + gap, columns * (cell_w + gap) + gap, 3), 255,
                    dtype=np.uint8)
    pixels = to_uint8(tiles)
    for i in range(n):  # one paste per feature cell (numpy slices; tiles drawn in batch above)
        y0 = gap + (i // columns) * (cell_h + gap) + label_height
        x0 = gap + (i % columns) * (cell_w + gap)
        for j in range(per):
            y, x = y0 + (j // per_row) * tile, x0 + (j % per_row) * tile
            sheet[y : y + tile, x : x + tile] = pixels[i, j]
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(labels):
        y0 = gap + (i // columns) * (cell_h + gap)
        x0 = gap + (i % columns) * (cell_w + gap)
        draw.text((x0 + 1, y0), text, fill=(0, 0, 0))
    return np.asarray(image)
