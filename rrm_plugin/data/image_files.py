"""One image file decoded into RGB floats in [0, 1], whatever its PIL mode.

- Size first: `Image.open` reads only the header, so an image of more than `MAX_IMAGE_PIXELS`
  pixels (or, for models that take one exact size, of another size) is refused before any pixel
  is decoded. PIL's decompression-bomb warning is not shown (this check is stricter) and its
  error, for headers beyond twice PIL's limit, becomes a one-line error too.
- Range: 8-bit modes (`1`, `L`, `P`, `RGB`, `CMYK`, ...) are divided by 255; 16-bit greyscale
  (`I;16`, `I;16B`, ...) by 65535, and 32-bit integer greyscale (`I`) by the file's own bit depth
  (16 for PNG and PPM; TIFF's `BitsPerSample`, one bit less when signed; refused when unknown,
  and negative values are refused). Float greyscale (`F`) is
  read as is when every value lies in [0, 1], else refused with its range.
- Transparency (an alpha band, or a palette / colour key marked transparent) is composited over
  `background`, and a warning names the file and how many pixels were not opaque. A fully
  transparent image has no content and is refused.
"""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from rrm_plugin.errors import MissingFileError, RRMUserError

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image read (pixels): a 64-megapixel photo decodes to about 0.8 GB of float RGB."""
WHITE = (1.0, 1.0, 1.0)
BLACK = (0.0, 0.0, 0.0)
# Bits per sample of greyscale modes whose range is not 0..255.
_DEEP_MODES = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I;16S": 16}
# What PIL's decoders raise on a damaged file (truncated data, broken chunks, malformed tags);
# caught around PIL's own `load` only, so that our code's errors are never mistaken for them.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError,
                  struct.error, zlib.error)


class ImageFileError(RRMUserError):
    """An image path that is missing, unreadable or not an image."""


def read_image(path: str | Path, *, background: tuple[float, float, float] = WHITE,
               size: tuple[int, int] | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Float[Tensor, "3 h w"]:
    """An image file as RGB floats in [0, 1] (see the module doc for modes and transparency).

    Args:
        path: The image file.
        background: RGB in [0, 1] that transparent pixels are composited over (default white).
        size: `(height, width)` the image must have (refused otherwise, before decoding).
        max_pixels: Larger images are refused before decoding.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no image file {path}")
    if len(background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in background):
        raise RRMUserError(f"background must be three numbers in [0, 1] (RGB), got {background!r}")
    with warnings.catch_warnings():
        # PIL warns on headers above its limit: our own check below refuses those in one line
        # (and PIL's error beyond twice its limit becomes the same kind of line).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as handle:
                _check_header(path, handle.size, size=size, max_pixels=max_pixels)
                _load(path, handle)
                colour, alpha = _decode(path, handle)
        except ImageFileError:
            raise
        except Image.DecompressionBombError as err:
            raise ImageFileError(f"{path} is too large to read ({err}); rrm reads images of at "
                                 f"most {max_pixels:,} pixels") from err
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ImageFileError(f"{path} is not a readable image file ({err})") from err
    return _composite(path, colour, alpha, background)


def _check_header(path: Path, wh: tuple[int, int], *, size: tuple[int, int] | None,
                  max_pixels: int) -> None:
    width, height = wh
    if size is not None and (height, width) != tuple(size):
        raise ImageFileError(f"{path} is {height}x{width} pixels, model expects "
                             f"{size[0]}x{size[1]}")
    if width * height > max_pixels:
        raise ImageFileError(f"{path} has {width * height:,} pixels ({width} wide, {height} "
                             f"high), more than the {max_pixels:,} rrm reads; downscale it first")


def _load(path: Path, image) -> None:
    """Decode the pixels (PIL reads lazily); a damaged file fails here, in one line."""
    try:
        image.load()
    except _DECODE_ERRORS as err:
        raise ImageFileError(f"{path} is not a readable image file (damaged or truncated: "
                             f"{type(err).__name__}: {err})") from err


def _decode(path: Path, image) -> tuple[Tensor, Tensor | None]:
    """`(colour [h, w] or [h, w, 3] in [0, 1], alpha [h, w] in [0, 1] or None)`."""
    mode = image.mode
    if mode == "F":
        values = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        if not bool(values.isfinite().all()):
            raise ImageFileError(f"{path} has non-finite 32-bit float pixels")
        if values.numel() and (values.min() < 0 or values.max() > 1):
            raise ImageFileError(f"{path} has 32-bit float pixels in [{values.min().item():g}, "
                                 f"{values.max().item():g}]; float images are read only when "
                                 "every pixel is in [0, 1]")
        return values, None
    if mode == "I" or mode in _DEEP_MODES:
        return _decode_deep(path, image)
    has_alpha = "A" in image.getbands() or "a" in image.getbands() or (
        "transparency" in image.info)
    if has_alpha:
        rgba = torch.from_numpy(np.asarray(image.convert("RGBA"), dtype=np.uint8).copy())
        return rgba[..., :3].float() / 255.0, rgba[..., 3].float() / 255.0
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    return rgb.float() / 255.0, None


def _top_value(path: Path, image) -> tuple[int, int]:
    """`(bits, largest value)` of an integer greyscale image, from its mode or its file."""
    if image.mode in _DEEP_MODES:
        return _DEEP_MODES[image.mode], 2**_DEEP_MODES[image.mode] - 1
    if image.format in ("PNG", "PPM"):  # their integer greyscale is at most 16 bits
        return 16, 2**16 - 1
    tags = getattr(image, "tag_v2", {}) if image.format == "TIFF" else {}
    bits, sample_format = tags.get(258), tags.get(339, 1)
    if bits is None:
        raise ImageFileError(f"{path} has 32-bit integer pixels of unknown bit depth "
                             f"({image.format}); save it as 8- or 16-bit")
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    signed = (sample_format[0] if isinstance(sample_format, tuple) else sample_format) == 2
    return bits, 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def _decode_deep(path: Path, image) -> tuple[Tensor, Tensor | None]:
    bits, top = _top_value(path, image)
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > top):
        raise ImageFileError(f"{path} has {bits}-bit pixels in [{values.min()}, {values.max()}], "
                             f"outside 0..{top}")
    colour = torch.from_numpy((values / top).astype(np.float32))
    key = image.info.get("transparency")
    alpha = None if key is None else torch.from_numpy(values != key).float()
    return colour, alpha


def _composite(path: Path, colour: Tensor, alpha: Tensor | None,
               background: tuple[float, float, float]) -> Float[Tensor, "3 h w"]:
    rgb = (colour[..., None].expand(*colour.shape, 3) if colour.dim() == 2 else colour
           ).permute(2, 0, 1)
    if alpha is None or bool((alpha == 1).all()):
        return rgb.contiguous()
    if bool((alpha == 0).all()):
        raise ImageFileError(f"{path} is fully transparent (alpha 0 everywhere): it has no "
                             "content to explain")
    n_clear = int((alpha < 1).sum())
    logger.warning("%s: %d of %d pixels are transparent or translucent; composited over the "
                   "background RGB %s", path, n_clear, alpha.numel(),
                   tuple(round(float(c), 4) for c in background))
    back = torch.tensor(background, dtype=rgb.dtype)[:, None, None]
    return rgb * alpha + back * (1 - alpha)
