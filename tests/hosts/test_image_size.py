"""`with_image_size`: a HookedViT at another input size, position embedding resampled."""

import pytest
import torch

from rrm_plugin.hosts.prisma import build_hooked_vit, with_image_size
from tests.conftest import tiny_vit_config


@pytest.fixture
def vit():
    return build_hooked_vit(tiny_vit_config(), seed=0).eval()  # 8 px, patch 4: 1 + 2x2 tokens


def test_same_size_is_the_same_model(vit):
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    same = with_image_size(vit, 8)
    assert torch.equal(same(images), vit(images))


def test_doubled_size_keeps_weights_and_resamples_the_grid(vit):
    with torch.no_grad():
        grid = torch.arange(4.0)[:, None] * torch.ones(1, vit.cfg.d_model)  # 2x2 grid rows 0..3
        vit.pos_embed.W_pos[1:] = 5.0  # constant over the patches
        vit.pos_embed.W_pos[0] = grid[3] + 7.0
    big = with_image_size(vit, 16)
    assert big.cfg.image_size == 16 and big.pos_embed.W_pos.shape == (1 + 16, vit.cfg.d_model)
    # The class token's row is kept; a constant grid stays constant under resampling.
    assert torch.equal(big.pos_embed.W_pos[0], vit.pos_embed.W_pos[0])
    torch.testing.assert_close(big.pos_embed.W_pos[1:], torch.full((16, vit.cfg.d_model), 5.0))
    for (name, a), (_, b) in zip(vit.named_parameters(), big.named_parameters(), strict=True):
        if name != "pos_embed.W_pos":
            assert torch.equal(a, b), name
    _, cache = big.run_with_cache(torch.rand(1, 3, 16, 16))
    assert cache["blocks.0.hook_resid_post"].shape[1] == 17
    assert vit.cfg.image_size == 8  # the original is untouched


def test_sizes_off_the_patch_grid_are_refused(vit):
    with pytest.raises(ValueError, match="multiple of the patch size 4, got 10"):
        with_image_size(vit, 10)


def test_grid_is_resampled_bicubically_in_row_major_order(vit):
    d = vit.cfg.d_model
    with torch.no_grad():
        vit.pos_embed.W_pos.normal_(generator=torch.Generator().manual_seed(3))
    big = with_image_size(vit, 16)
    # Oracle: the 2x2 patch grid as an image [1, d, 2, 2], bicubic to 4x4 (antialiased, i.e.
    # PIL's cubic kernel, as timm loads checkpoints at other sizes), back to rows.
    grid = vit.pos_embed.W_pos[1:].detach().T.reshape(1, d, 2, 2)
    want = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic",
                                           align_corners=False, antialias=True)[0].reshape(d, 16).T
    torch.testing.assert_close(big.pos_embed.W_pos[1:], want, atol=1e-5, rtol=1e-5)
