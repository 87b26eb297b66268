"""The engine taking several images per step gives each image's per-image graph (issue 11 s. 1)."""

import pytest
import torch

from rrm_plugin.attribution.build import _image_groups, attribute
from rrm_plugin.attribution.engine import EngineConfig
from tests.attribution.conftest import prisma_like_saes

TOLERANCE = 1e-6  # relative to the largest entry: larger matrix products may sum in another order


def assert_same_graphs(one, many):
    assert len(one) == len(many)
    for a, b in zip(one, many, strict=True):
        ta, tb = a._tensors(), b._tensors()
        assert ta.keys() == tb.keys()
        for name in ta:
            assert ta[name].shape == tb[name].shape, name
            if ta[name].is_floating_point():
                scale = float(ta[name].abs().max().clamp(min=1e-12))
                assert float((ta[name] - tb[name]).abs().max()) <= TOLERANCE * scale, name
            else:
                assert torch.equal(ta[name], tb[name]), name
        assert any(e.abs().max() > 0 for e in a.edges)


@pytest.mark.parametrize("granularity", ["feature", "token"])
@pytest.mark.parametrize("per_step", [2, 3])
def test_batched_engine_equals_per_image(vit, saes, images, baselines, granularity, per_step):
    kwargs = dict(baselines=baselines, granularity=granularity)
    one = attribute(vit, saes, images, engine=EngineConfig(images_per_step=1), **kwargs)
    many = attribute(vit, saes, images, engine=EngineConfig(images_per_step=per_step), **kwargs)
    assert_same_graphs(one, many)


@pytest.mark.parametrize("kind", ["relu", "topk_cls"])
@pytest.mark.parametrize("granularity", ["feature", "token"])
def test_batched_engine_prisma_like_saes(vit, images, reference_images, kind, granularity):
    from rrm_plugin.attribution.baselines import compute_baselines

    saes = prisma_like_saes(vit, kind=kind)
    baselines = compute_baselines(vit, saes, reference_images, progress=False)
    kwargs = dict(baselines=baselines, granularity=granularity)
    one = attribute(vit, saes, images, **kwargs)
    many = attribute(vit, saes, images, engine=EngineConfig(images_per_step=3), **kwargs)
    assert_same_graphs(one, many)


def test_small_chunks_and_token_limit_split_the_batch(vit, saes, images, baselines):
    one = attribute(vit, saes, images, baselines=baselines, granularity="token")
    sizes = [(len(g.layers[0]), len(g.layers[1])) for g in one]
    # Room for one image's token edges of pair 0 but not for two images' joint matrix.
    limit = max((s + 1) * t for s, t in sizes) + 1
    assert all((s0 + s1 + 1) * (t0 + t1) > limit
               for (s0, t0), (s1, t1) in zip(sizes, sizes[1:], strict=False))
    engine = EngineConfig(images_per_step=3, max_token_edges=10**9, chunk_elements=2**10)
    nodes = [[torch.zeros(s, 2), torch.zeros(t, 2)] for s, t in sizes]
    assert _image_groups(nodes, 0, "token", EngineConfig(images_per_step=3,
                                                         max_token_edges=limit)) == [[0], [1], [2]]
    assert _image_groups(nodes, 0, "token", engine) == [[0, 1, 2]]
    assert _image_groups(nodes, 0, "feature", EngineConfig(images_per_step=2)) == [[0, 1], [2]]
    many = attribute(vit, saes, images, baselines=baselines, granularity="token", engine=engine)
    assert_same_graphs(one, many)
    # At the limit attribute splits the batch itself (a joint matrix would be refused).
    split = attribute(vit, saes, images, baselines=baselines, granularity="token",
                      engine=EngineConfig(images_per_step=3, max_token_edges=limit))
    assert_same_graphs(one, split)


def test_images_per_step_must_be_positive():
    with pytest.raises(ValueError, match="images_per_step"):
        EngineConfig(images_per_step=0)


def test_token_groups_at_the_edge_limit():
    """Two images of one source and one target node: (1 + 1 + 1) x (1 + 1) = 6 joint entries."""
    nodes = [[torch.zeros(1, 2), torch.zeros(1, 2)]] * 3
    assert _image_groups(nodes, 0, "token", EngineConfig(images_per_step=3,
                                                         max_token_edges=6)) == [[0, 1], [2]]
    assert _image_groups(nodes, 0, "token", EngineConfig(images_per_step=3,
                                                         max_token_edges=5)) == [[0], [1], [2]]
    # Three images: (3 + 1) x 3 = 12.
    assert _image_groups(nodes, 0, "token", EngineConfig(images_per_step=3,
                                                         max_token_edges=12)) == [[0, 1, 2]]
