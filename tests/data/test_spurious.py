"""The digits-spurious benchmark: marker agreement, splits, paired test images, markers drawn."""

import numpy as np
import torch

from rrm_plugin.data.spurious import (
    SpuriousConfig,
    group_name,
    marker_colours,
    split_source_digits,
    spurious_test_set,
    spurious_train_sampler,
    spurious_validation_set,
)

CFG = SpuriousConfig()


def test_training_markers_agree_at_the_configured_rate():
    batch = spurious_train_sampler(CFG, seed=0)(10_000)
    # 95% agree by design plus 5% x 1/10 random markers that agree by chance: 95.5%.
    assert abs(float(batch.agrees.float().mean()) - 0.955) < 0.006
    balanced = spurious_train_sampler(CFG, seed=0, balanced=True)(10_000)
    assert abs(float(balanced.agrees.float().mean()) - 0.5) < 0.015
    disagree = balanced.markers[~balanced.agrees]
    counts = torch.bincount(disagree, minlength=10).float() / len(disagree)
    assert counts.min() > 0.08 and counts.max() < 0.12  # other classes uniformly


def test_markers_are_painted_in_their_class_colour():
    batch = spurious_train_sampler(CFG, seed=1)(64)
    corner = batch.images[:, :, : CFG.marker_size, : CFG.marker_size]
    expected = torch.from_numpy(marker_colours())[batch.markers]
    torch.testing.assert_close(corner, expected[:, :, None, None].expand_as(corner))
    # The rest of the canvas is the usual render: never the marker patch in every pixel.
    assert not torch.equal(batch.images[:, :, CFG.marker_size:, :], corner[:, :, :1, :1].expand(
        -1, -1, 24 - CFG.marker_size, 24))


def test_splits_are_disjoint_and_test_is_digits_vits_held_out():
    train, val, test = split_source_digits(CFG, 1797)
    assert not (set(train) & set(val)) and not (set(train) | set(val)) & set(test)
    assert len(train) + len(val) + len(test) == 1797
    from rrm_plugin.data.digits import split_indices

    assert np.array_equal(test, split_indices(CFG.canvas, 1797)[1])
    stream = spurious_train_sampler(CFG, seed=3)(2000)
    assert set(stream.source_index.tolist()) <= set(train.tolist())


def test_paired_sets_hold_each_digit_once_agreeing_once_not():
    for split in (spurious_test_set(CFG), spurious_validation_set(CFG)):
        n = len(split.labels) // 2
        assert torch.equal(split.source_index[:n], split.source_index[n:])
        assert split.agrees[:n].all() and not split.agrees[n:].any()
        sizes = torch.bincount(split.groups, minlength=20)
        assert sizes.min() >= 20  # every group populated
    a, b = spurious_test_set(CFG), spurious_test_set(CFG)
    assert torch.equal(a.images, b.images)  # seeded
    assert group_name(7) == "3/disagree" and group_name(6) == "3/agree"


def test_bad_benchmark_settings_name_what_is_wrong():
    import pytest

    with pytest.raises(ValueError, match=r"agreement must be in \[0, 1\], got 1.5"):
        SpuriousConfig(agreement=1.5)
    with pytest.raises(ValueError, match=r"marker_size must be in \[1, 24\], got 0"):
        SpuriousConfig(marker_size=0)
    with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\), got 1.0"):
        SpuriousConfig(validation_fraction=1.0)
    with pytest.raises(ValueError, match=r"cue must be one of .*'stroke'\], got 'corner'"):
        SpuriousConfig(cue="corner")


STROKE = SpuriousConfig(cue="stroke")


def test_stroke_cue_is_the_hue_of_the_digits_own_pixels():
    """The `stroke` variant: no marker, and the digit's full-ink pixels have hue cue / 10."""
    from matplotlib.colors import rgb_to_hsv

    from rrm_plugin.data.digits import load_source_digits

    batch = spurious_train_sampler(STROKE, seed=1)(64)
    marked = spurious_train_sampler(CFG, seed=1)(64)
    # The same stream as the marker benchmark (labels, cues, digits, placement): only the paint
    # differs, so the variant changes the cue and nothing else.
    for field in ("labels", "markers", "source_index", "object_mask"):
        assert torch.equal(getattr(batch, field), getattr(marked, field)), field
    assert (batch.markers != batch.labels).any() and (batch.markers == batch.labels).any()
    # Background patches (no digit pixel, not the marker's corner patch) are the same pixels.
    patches = batch.images.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5)
    marked_patches = marked.images.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5)
    background = ~batch.object_mask.reshape(64, 6, 6)
    background[:, 0, 0] = False
    assert background.sum() > 64 * 10
    assert torch.equal(patches[background], marked_patches[background])
    digits, _ = load_source_digits()
    checked = 0
    for i in range(64):
        if digits[int(batch.source_index[i])].max() < 1.0:
            continue  # no full-ink pixel: every digit pixel is blended with the background
        image = batch.images[i].permute(1, 2, 0).numpy()
        # The brightest pixels are the digit's full-ink ones: foreground colour, hue cue / 10.
        value = image.max(-1)
        hues = rgb_to_hsv(image[np.isclose(value, value.max())])[:, 0]
        gap = np.abs(hues - int(batch.markers[i]) / 10)
        assert np.minimum(gap, 1 - gap).max() < 1e-3, (i, hues)  # on the hue circle
        checked += 1
    assert checked > 40
    # No corner marker: the top-left patch is never the marker's saturated colour.
    corner = batch.images[:, :, :CFG.marker_size, :CFG.marker_size]
    painted = torch.from_numpy(marker_colours())[batch.markers][:, :, None, None]
    assert not (corner == painted).all(dim=(1, 2, 3)).any()


def test_stroke_validation_and_test_sets_pair_each_digit_with_both_cues():
    test = spurious_test_set(STROKE)
    reference = spurious_test_set(CFG)
    assert torch.equal(test.markers, reference.markers) and torch.equal(test.labels,
                                                                        reference.labels)
    assert not torch.equal(test.images, reference.images)
    assert torch.bincount(test.groups, minlength=20).min() >= 20
