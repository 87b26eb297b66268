import numpy as np
import pytest
import torch

from rrm_plugin.data.digits import (
    DigitsCanvasConfig,
    held_out_set,
    load_source_digits,
    render,
    split_indices,
    train_sampler,
)

CFG = DigitsCanvasConfig(canvas_size=24, scale=2, patch_size=4)


def test_split_is_fixed_disjoint_and_complete():
    train, test = split_indices(CFG, 1797)
    train2, test2 = split_indices(CFG, 1797)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert len(set(train) & set(test)) == 0
    assert len(train) + len(test) == 1797
    assert len(test) == round(0.2 * 1797)


def test_object_mask_marks_exactly_the_patches_that_differ_from_background():
    digits, _ = load_source_digits()
    images, masks = render(digits[:64], cfg=CFG, rng=np.random.default_rng(3))
    g, p = CFG.canvas_size // CFG.patch_size, CFG.patch_size
    patches = images.reshape(64, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(64, g * g, -1)
    background = images[:, :, 0, 0]  # every source digit has a blank border, so corners are bg
    bg_rep = np.repeat(background[:, None, :], p * p, axis=2).reshape(64, 1, -1)
    differs = (np.abs(patches - bg_rep) > 1e-6).any(-1)
    assert np.array_equal(differs, masks)
    assert masks.any(1).all() and (~masks).any(1).all()


def test_foreground_brighter_than_background_in_every_channel():
    digits, _ = load_source_digits()
    images, masks = render(digits[:200], cfg=CFG, rng=np.random.default_rng(0))
    flat = images.reshape(200, 3, -1)
    brightest = flat.max(-1)  # pixels with full digit intensity carry the foreground colour
    background = images[:, :, 0, 0]
    assert (brightest.min(1) >= 0.3 - 1e-6).all()
    assert (background.max(1) <= 0.2 + 1e-6).all()


def test_test_set_is_deterministic_and_train_stream_varies():
    a, b = held_out_set(CFG), held_out_set(CFG)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (359, 3, 24, 24) and a.object_mask.shape == (359, 36)
    sample = train_sampler(CFG, seed=0)
    x1, x2 = sample(8), sample(8)
    assert not torch.equal(x1.images, x2.images)
    _, test_idx = split_indices(CFG, 1797)
    assert not set(x1.source_index.tolist()) & set(test_idx.tolist())


def test_bad_canvas_config_is_rejected():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        DigitsCanvasConfig(canvas_size=25, patch_size=4)
    with pytest.raises(ValueError, match="does not fit"):
        DigitsCanvasConfig(canvas_size=12, scale=2, patch_size=4)
