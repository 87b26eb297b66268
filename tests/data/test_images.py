"""Image files read at their real range, transparency composited and said, huge files refused.

Every file is written with PIL (or byte by byte, `tests.data.pngs`) in a temporary folder; the
expected pixels are worked out by hand from the values written.
"""

import logging
import struct
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from rrm_plugin.data.image_files import MAX_IMAGE_PIXELS
from rrm_plugin.data.images import (
    ImageFileError,
    identity_preprocessing,
    load_images,
    read_image,
)
from rrm_plugin.zoo.hub_models import AUTHORS_PREPROCESSING
from tests.data.pngs import write_blank_png

# The reader divides in float32; the oracle in float64. A value in [0, 1] rounds to float32
# within half an ulp of 1 (2**-25 = 3e-8); products of two such values within about twice that.
F32 = 1e-7


def _expect(image: torch.Tensor, rgb_rows: list) -> None:
    """`image` [3, h, w] equals `rgb_rows` ([h][w] RGB float64 triples) within float32 rounding."""
    expected = np.asarray(rgb_rows, dtype=np.float64).transpose(2, 0, 1)
    assert image.dtype == torch.float32
    assert image.shape == expected.shape
    np.testing.assert_allclose(image.numpy().astype(np.float64), expected, rtol=0, atol=F32)


def _grey(rows: list) -> list:
    return [[[v, v, v] for v in row] for row in rows]


@pytest.fixture
def logged(caplog):
    caplog.set_level(logging.WARNING, logger="rrm_plugin.data.image_files")
    return caplog


GRADIENT_16 = [0, 1, 255, 256, 4369, 32767, 32768, 65534, 65535]


def test_16_bit_greyscale_png_is_divided_by_65535(tmp_path):
    values = np.array([GRADIENT_16, GRADIENT_16[::-1]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"  # what a user's 16-bit scan opens as
    image = read_image(path)
    _expect(image, _grey((values / 65535.0).tolist()))
    assert image[0, 0, 2].item() == pytest.approx(255 / 65535)  # not clipped to white
    assert int((image == 1.0).sum()) == 3 * 2  # only 65535 is white (one per row)


def test_16_bit_big_endian_tiff_and_32_bit_signed_tiff_use_their_bit_depth(tmp_path):
    big = tmp_path / "grey16b.tif"
    values = np.array([GRADIENT_16], dtype=np.uint16)
    Image.frombytes("I;16B", (len(GRADIENT_16), 1), values.astype(">u2").tobytes()).save(big)
    with Image.open(big) as check:
        assert check.mode in ("I;16B", "I;16")
    _expect(read_image(big), _grey((values / 65535.0).tolist()))

    wide = tmp_path / "grey32.tif"
    values = np.array([[0, 1 << 30, 2**31 - 1]], dtype=np.int32)
    Image.fromarray(values).save(wide)
    with Image.open(wide) as check:
        assert check.mode == "I"
    _expect(read_image(wide), _grey((values / (2**31 - 1)).tolist()))

    negative = tmp_path / "negative.tif"
    Image.fromarray(np.array([[-5, 7]], dtype=np.int32)).save(negative)
    with pytest.raises(ImageFileError, match=r"negative.tif has 32-bit pixels in \[-5, 7\]"):
        read_image(negative)


def test_float_images_in_0_1_are_read_as_is_others_refused_with_their_range(tmp_path):
    inside = tmp_path / "inside.tif"
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32)).save(inside)
    _expect(read_image(inside), _grey([[0.0, 0.25, 1.0]]))
    outside = tmp_path / "outside.tif"
    Image.fromarray(np.array([[-0.5, 3.0]], dtype=np.float32)).save(outside)
    with pytest.raises(ImageFileError, match=r"outside.tif has 32-bit float pixels in \[-0.5, 3\]"):
        read_image(outside)


def test_eight_bit_modes(tmp_path, logged):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(grey)
    _expect(read_image(grey), _grey([[0.0, 77 / 255, 1.0]]))

    bits = tmp_path / "bits.png"
    Image.fromarray(np.array([[True, False, True]])).convert("1").save(bits)
    with Image.open(bits) as check:
        assert check.mode == "1"
    _expect(read_image(bits), _grey([[1.0, 0.0, 1.0]]))

    cmyk = tmp_path / "cmyk.tif"
    Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0])).save(cmyk)
    _expect(read_image(cmyk), [[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])

    opaque = tmp_path / "opaque.png"
    Image.frombytes("RGBA", (2, 1), bytes([10, 20, 30, 255, 200, 100, 0, 255])).save(opaque)
    _expect(read_image(opaque, background=(0.3, 0.3, 0.3)),
            [[[10 / 255, 20 / 255, 30 / 255], [200 / 255, 100 / 255, 0.0]]])
    assert not logged.records  # opaque alpha: nothing to say


def _palette_image(tmp_path, *, transparent: int | None):
    image = Image.new("P", (3, 1))
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    image.putdata([2, 0, 1])
    path = tmp_path / ("palette.png" if transparent is None else "palette_t.png")
    if transparent is None:
        image.save(path)
    else:
        image.save(path, transparency=transparent)
    return path


def test_palette_images_give_their_palette_colours(tmp_path, logged):
    image = read_image(_palette_image(tmp_path, transparent=None))
    _expect(image, [[[70 / 255, 80 / 255, 90 / 255], [10 / 255, 20 / 255, 30 / 255],
                     [40 / 255, 50 / 255, 60 / 255]]])
    assert not logged.records


def test_palette_transparency_is_composited_over_the_background_and_said(tmp_path, logged):
    path = _palette_image(tmp_path, transparent=1)  # the last pixel (index 1) is transparent
    rest = [[70 / 255, 80 / 255, 90 / 255], [10 / 255, 20 / 255, 30 / 255]]
    _expect(read_image(path), [[*rest, [1.0, 1.0, 1.0]]])  # default: white
    _expect(read_image(path, background=(0.25, 0.5, 0.75)), [[*rest, [0.25, 0.5, 0.75]]])
    assert len(logged.records) == 2
    message = logged.records[0].getMessage()
    assert str(path) in message and "1 of 3 pixels" in message and "(1.0, 1.0, 1.0)" in message

    # The embedded digits models see their dark canvas behind transparent pixels.
    loaded = load_images([path], _exact(3, 1))
    _expect(loaded.images[0], [[*rest, [0.0, 0.0, 0.0]]])


def _exact(width: int, height: int):
    from dataclasses import replace

    return replace(identity_preprocessing(1), size=(height, width))


def test_translucent_rgba_and_la_composite_by_hand(tmp_path, logged):
    path = tmp_path / "rgba.png"
    Image.frombytes("RGBA", (2, 1), bytes([200, 100, 0, 128, 10, 20, 30, 255])).save(path)
    a = 128 / 255
    over_white = [200 / 255 * a + (1 - a), 100 / 255 * a + (1 - a), 0 + (1 - a)]
    _expect(read_image(path), [[over_white, [10 / 255, 20 / 255, 30 / 255]]])
    back = (0.2, 0.4, 0.6)
    over_back = [200 / 255 * a + 0.2 * (1 - a), 100 / 255 * a + 0.4 * (1 - a), 0.6 * (1 - a)]
    _expect(read_image(path, background=back), [[over_back, [10 / 255, 20 / 255, 30 / 255]]])

    la = tmp_path / "la.png"
    Image.frombytes("LA", (2, 1), bytes([100, 51, 100, 0])).save(la)
    _expect(read_image(la, background=(0.0, 0.0, 0.0)),
            _grey([[100 / 255 * 51 / 255, 0.0]]))
    assert [str(path) in r.getMessage() for r in logged.records] == [True, True, False]


def test_fully_transparent_images_are_refused(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(path)
    with pytest.raises(ImageFileError, match=r"clear.png is fully transparent"):
        read_image(path)
    with pytest.raises(ImageFileError, match=r"fully transparent"):
        load_images([path], _exact(4, 4))


def _never_decoded(monkeypatch) -> list:
    decoded = []
    original = ImageFile.ImageFile.load

    def spy(self):
        decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return decoded


def test_a_12000_square_png_is_refused_from_its_header(tmp_path, monkeypatch):
    path = write_blank_png(tmp_path / "big.png", width=12000, height=12000)
    assert path.stat().st_size < 300_000
    decoded = _never_decoded(monkeypatch)
    tracemalloc.start()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ImageFileError) as err:
        warnings.simplefilter("always")
        load_images([path], AUTHORS_PREPROCESSING)  # a hub model: resizes any size
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert caught == []  # PIL's DecompressionBombWarning (above 89.5M pixels) is not shown
    message = str(err.value)
    assert message == (f"{path} has 144,000,000 pixels (12000 wide, 12000 high), more than the "
                       f"{MAX_IMAGE_PIXELS:,} rrm reads; downscale it first")
    assert decoded == []
    # Decoding would take 144 MB in PIL alone and seconds; the header is a few hundred bytes.
    assert elapsed < 2.0 and peak < 20e6, (elapsed, peak)

    # An embedded model's exact size is checked from the header too.
    with pytest.raises(ImageFileError, match=r"big.png is 12000x12000 pixels, model expects 24x24"):
        load_images([path], identity_preprocessing(24))
    assert decoded == []


def test_the_pixel_limit_is_inclusive(tmp_path):
    path = tmp_path / "six.png"
    Image.new("L", (3, 2), 9).save(path)
    _expect(read_image(path, max_pixels=6), _grey([[9 / 255] * 3] * 2))
    with pytest.raises(ImageFileError, match=r"six.png has 6 pixels \(3 wide, 2 high\), more "
                                              r"than the 5 rrm reads"):
        read_image(path, max_pixels=5)


def test_a_30000_square_png_is_one_line_error_not_a_decompression_bomb(tmp_path):
    path = write_blank_png(tmp_path / "bomb.png", width=30000, height=30000)
    start = time.perf_counter()
    with pytest.raises(ImageFileError) as err:
        read_image(path)
    assert time.perf_counter() - start < 2.0
    assert not isinstance(err.value, Image.DecompressionBombError)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path} is too large to read (")
    assert message.endswith(f"rrm reads images of at most {MAX_IMAGE_PIXELS:,} pixels")


def test_damaged_files_are_one_line_errors_naming_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
                    ).save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])  # PIL: OSError, image file is truncated
    broken = tmp_path / "broken.png"
    # The IDAT chunk's length halved: PIL reads pixel data as the next chunk's header.
    at = data.index(b"IDAT") - 4
    half = struct.pack(">I", struct.unpack(">I", data[at : at + 4])[0] // 2)
    broken.write_bytes(data[:at] + half + data[at + 4 :])
    tiff = tmp_path / "tiff.tif"
    Image.open(good).save(tiff)
    data = tiff.read_bytes()
    # StripOffsets (tag 273, one LONG, little-endian) retyped as a RATIONAL: PIL's TypeError.
    at = data.index(struct.pack("<HHI", 273, 4, 1)) + 2
    tiff.write_bytes(data[:at] + struct.pack("<H", 5) + data[at + 2 :])
    for path, kind in ((truncated, "OSError"), (broken, "SyntaxError"), (tiff, "TypeError")):
        with pytest.raises(ImageFileError) as err:
            read_image(path)
        assert str(err.value).startswith(f"{path} is not a readable image file (damaged or "
                                         f"truncated: {kind}: ")
        assert "\n" not in str(err.value)
