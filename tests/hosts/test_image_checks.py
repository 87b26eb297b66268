"""Images a model cannot take are refused with our message, not computed on (issue 15 s. 4)."""

import pytest
import torch

import rrm_plugin
from rrm_plugin.hosts.prisma import MAX_ABS_PIXEL, check_images


def test_images_scaled_0_255_are_refused(tiny_vit, tiny_saes, tiny_images):
    raw = tiny_images * 255
    with pytest.raises(ValueError, match="values up to 2[0-9][0-9].*divide 0..255 images by 255"):
        check_images(tiny_vit, raw)
    with pytest.raises(ValueError, match="divide 0..255 images by 255"), \
            rrm_plugin.splice_saes(tiny_vit, tiny_saes):
        tiny_vit(raw)
    # Normalised pixels (mean/std) and [0, 1] pixels pass; the limit is stated.
    check_images(tiny_vit, (tiny_images - 0.5) / 0.229)
    check_images(tiny_vit, torch.full_like(tiny_images, MAX_ABS_PIXEL))
    with pytest.raises(ValueError):
        check_images(tiny_vit, torch.full_like(tiny_images, -MAX_ABS_PIXEL * 1.01))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_images_of_another_dtype_than_the_weights_are_refused(tiny_vit, tiny_images, dtype):
    with pytest.raises(TypeError, match=rf"images are {dtype} but the model's weights are "
                                        r"torch.float32: convert them with images.to"):
        check_images(tiny_vit, tiny_images.to(dtype))
    check_images(tiny_vit.to(dtype), tiny_images.to(dtype))  # matching dtypes pass
