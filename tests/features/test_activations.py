"""collect_top_activations against a whole-set oracle (all activations in memory at once)."""

import numpy as np
import pytest
import torch

from rrm_plugin.features.activations import (
    HIST_BINS,
    HIST_LOG10_RANGE,
    collect_top_activations,
)


def _all_acts(model, saes, images):
    """Oracle: every activation of every image in one forward, no batching or merging."""
    with torch.no_grad():
        _, cache = model.run_with_cache(images)
        return {h: sae.encode(cache[h]) for h, sae in saes.items()}


@pytest.fixture
def many_images():
    return torch.rand(11, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def test_top_k_densities_and_maps_match_whole_set(tiny_vit, tiny_saes, many_images):
    top = collect_top_activations(tiny_vit, tiny_saes, many_images, k=4, batch_size=3,
                                  progress=False)
    for hook, acts in _all_acts(tiny_vit, tiny_saes, many_images).items():
        t = top[hook]
        per_image = acts.amax(dim=1).T  # [d_sae, n]
        # Ranks by a Python sort per feature (ties: earlier image first).
        for f in range(per_image.shape[0]):
            order = sorted(range(len(many_images)), key=lambda i, f=f: -float(per_image[f, i]))[:4]
            assert t.indices[f].tolist() == order
            torch.testing.assert_close(t.values[f], per_image[f, order])
            torch.testing.assert_close(t.maps[f], acts[order, :, f])
        torch.testing.assert_close(t.token_density, (acts > 0).float().mean(dim=(0, 1)))
        torch.testing.assert_close(t.image_density, (acts > 0).any(1).float().mean(0))
        torch.testing.assert_close(t.max_activation, acts.amax(dim=(0, 1)))
        torch.testing.assert_close(t.mean_activation, acts.mean(dim=(0, 1)))
        edges = np.linspace(*HIST_LOG10_RANGE, HIST_BINS + 1)
        for f in range(acts.shape[-1]):
            live = acts[..., f][acts[..., f] > 0].log10().clamp(*HIST_LOG10_RANGE).numpy()
            expected, _ = np.histogram(live, bins=edges)
            assert t.histogram[f].tolist() == expected.tolist()
        assert t.n_images == 11 and t.n_tokens == acts.shape[1]


def test_batch_size_does_not_change_anything(tiny_vit, tiny_saes, many_images):
    one = collect_top_activations(tiny_vit, tiny_saes, many_images, k=3, batch_size=1,
                                  progress=False)
    all_ = collect_top_activations(tiny_vit, tiny_saes, many_images, k=3, batch_size=64,
                                   progress=False)
    for hook in tiny_saes:
        assert torch.equal(one[hook].indices, all_[hook].indices)
        torch.testing.assert_close(one[hook].maps, all_[hook].maps)
        assert torch.equal(one[hook].histogram, all_[hook].histogram)


def test_planted_image_is_top(tiny_vit, tiny_saes, many_images):
    """A copy of a feature's best image ties with it: original first, copy second (known answer)."""
    hook = next(iter(tiny_saes))
    base = collect_top_activations(tiny_vit, tiny_saes, many_images, k=2, progress=False)[hook]
    f = int(base.max_activation.argmax())
    images = torch.cat([many_images, many_images[base.indices[f, :1]]])
    top = collect_top_activations(tiny_vit, tiny_saes, images, k=2, batch_size=4,
                                  progress=False)[hook]
    # The duplicate ties with the original: the earlier image wins, the copy comes second.
    assert top.indices[f].tolist() == [int(base.indices[f, 0]), len(many_images)]
    assert top.values[f, 0] == top.values[f, 1]


def test_k_larger_than_set_is_clamped(tiny_vit, tiny_saes, many_images):
    top = collect_top_activations(tiny_vit, tiny_saes, many_images[:2], k=8, progress=False)
    assert all(t.values.shape[1] == 2 for t in top.values())


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(k=0), "k must be a positive integer"),
    (dict(images=torch.rand(3, 8, 8)), r"\[batch, channels, height, width\]"),
    (dict(images=torch.rand(0, 3, 8, 8)), "images is empty"),
    (dict(saes={}), "no SAEs given"),
])
def test_bad_input(tiny_vit, tiny_saes, many_images, kwargs, match):
    args = dict(saes=tiny_saes, images=many_images, k=2) | kwargs
    with pytest.raises(ValueError, match=match):
        collect_top_activations(tiny_vit, progress=False, **args)


def test_unknown_hook(tiny_vit, tiny_saes, many_images):
    sae = next(iter(tiny_saes.values()))
    with pytest.raises(ValueError, match="'blocks.9.hook_resid_post' is not a hook point"):
        collect_top_activations(tiny_vit, {"blocks.9.hook_resid_post": sae}, many_images,
                                progress=False)
