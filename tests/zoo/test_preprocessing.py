"""Each named model's preprocessing equals its upstream pipeline's, pixel for pixel.

The oracles are the upstream packages' own preprocessors, built from explicit values (nothing is
downloaded): torchvision's `Resize((224, 224))` + `ToTensor` + `Normalize(0.5, 0.5)` on PIL images
(the RRM authors' pipeline for ViT-B/16 and DINOv2; timm's `create_transform` with the same
values is a second oracle), transformers' PIL CLIP image processor (the authors' CLIPProcessor;
transformers' default CLIP processor now resizes with torchvision instead, about 1.5e-2 away)
and open_clip's `image_transform` with the DataComp checkpoint's `preprocess_cfg`. The images are
two photos and random 8-bit noise of real sizes, landscape and portrait, with odd crop margins
(noise makes any resampling difference visible).
"""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from rrm_plugin.data.images import preprocess
from rrm_plugin.zoo.hub_models import CLIP_MEAN, CLIP_STD, HUB_MODELS

# Both sides resize the same 8-bit image with PIL and crop the same pixels, then apply the same
# float32 ops (x / 255, (x - mean) / std); transformers rescales in float64 first, which can move
# a value by one float32 rounding (about 2.4e-7 at the largest |x| = 2.2). 1e-6 allows that; a
# float-domain resize is off by up to about 5e-2 on photos and 0.3 on noise.
TOL = 1e-6


def sample_arrays() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    noise = [g.integers(0, 256, shape, dtype=np.uint8)
             for shape in ((375, 500, 3), (640, 427, 3), (225, 301, 3), (224, 224, 3),
                           (224, 150, 3))]
    return [*load_sample_images().images, *noise]


def authors_torchvision():
    from torchvision import transforms as T

    return T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


def authors_timm():
    from timm.data import create_transform

    # crop_mode="squash": Resize((224, 224)); crop_pct=1: the centre crop keeps everything.
    return create_transform(input_size=(3, 224, 224), interpolation="bilinear", crop_pct=1.0,
                            crop_mode="squash", mean=(0.5,) * 3, std=(0.5,) * 3)


def clip_image_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 224},
                                      crop_size={"height": 224, "width": 224})
    return lambda image: torch.as_tensor(
        np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0]))


def open_clip_transform():
    import open_clip

    # The DataComp checkpoint's open_clip_config.json preprocess_cfg, written out.
    return open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD,
                                     interpolation="bicubic", resize_mode="shortest")


UPSTREAM = {
    "vit-b16-imagenet": [authors_torchvision, authors_timm],
    "dinov2-vitb14-reg": [authors_torchvision, authors_timm],
    "clip-vit-b16": [clip_image_processor],
    "clip-vit-b32": [clip_image_processor],
    "clip-vit-b32-datacomp": [open_clip_transform],
}


@pytest.mark.parametrize("name", list(HUB_MODELS))
def test_preprocessing_equals_upstream(name):
    images = sample_arrays()
    ours = [preprocess(torch.from_numpy(a.copy()).permute(2, 0, 1), HUB_MODELS[name].preprocessing)
            for a in images]
    for make in UPSTREAM[name]:  # a model without an oracle fails here
        transform = make()
        for array, mine in zip(images, ours, strict=True):
            theirs = transform(Image.fromarray(array))
            assert mine.shape == theirs.shape == (3, 224, 224)
            assert mine.dtype == torch.float32
            assert (mine - theirs).abs().max() <= TOL, (name, make.__name__, array.shape)


def test_preprocess_takes_8bit_pixels_only():
    pixels = torch.zeros(3, 8, 8, dtype=torch.uint8)
    spec = HUB_MODELS["clip-vit-b16"].preprocessing
    for bad in (pixels.float() / 255, pixels[:1], pixels.permute(1, 2, 0)):
        with pytest.raises(TypeError, match=r"preprocess takes 8-bit RGB pixels \[3, h, w\]"):
            preprocess(bad, spec)


def test_an_image_already_at_the_size_is_only_scaled_and_normalised():
    # Known answer: no resize, no crop; pixel p becomes (p / 255 - mean) / std.
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 224, 224), generator=g, dtype=torch.uint8)
    spec = HUB_MODELS["clip-vit-b16"].preprocessing
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    expected = (pixels.double() / 255 - mean.double()) / std.double()
    # float32 arithmetic against float64: a few float32 roundings at |x| <= 2.2.
    torch.testing.assert_close(preprocess(pixels, spec).double(), expected, atol=1e-6, rtol=0)
