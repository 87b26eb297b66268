import pytest
import torch

from rrm_plugin.hosts.prisma import build_hooked_vit, check_images
from tests.conftest import tiny_vit_config


def test_every_weight_is_initialised_and_seeded():
    a = build_hooked_vit(tiny_vit_config(), seed=0)
    b = build_hooked_vit(tiny_vit_config(), seed=0)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.isfinite(pa).all(), name
        assert torch.equal(pa, pb), name
        assert pa.abs().max() < 10, name  # torch.empty garbage would be huge or NaN
    assert a.blocks[0].attn.W_Q.std().item() == pytest.approx(0.02, rel=0.3)
    assert torch.equal(a.blocks[0].ln1.w, torch.ones_like(a.blocks[0].ln1.w))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 3, 9, 8), r"9x8 pixels, model expects 8x8"),
        (torch.rand(2, 1, 8, 8), r"1 channels, model expects 3"),
        (torch.rand(3, 8, 8), r"must have shape \[batch, 3, 8, 8\]"),
        ((torch.rand(2, 3, 8, 8) * 255).to(torch.uint8), r"floating-point .* torch.uint8"),
        (torch.full((2, 3, 8, 8), float("nan")), r"384 NaN/inf values"),
    ],
)
def test_bad_images_are_rejected_with_what_was_expected(tiny_vit, images, message):
    with pytest.raises((ValueError, TypeError), match=message):
        check_images(tiny_vit, images)


def test_good_images_pass_through(tiny_vit, tiny_images):
    assert check_images(tiny_vit, tiny_images) is tiny_images
