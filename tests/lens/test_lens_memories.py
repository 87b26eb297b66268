import pytest
import torch
from vit_prisma.configs.HookedViTConfig import HookedViTConfig

from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.lens.memories import (
    class_value_agreement,
    memory_agreement,
    value_class_projection,
    value_vectors,
)

C, D, D_MLP = 5, 8, 16


def _config(**overrides) -> HookedViTConfig:
    return HookedViTConfig(**{**dict(
        n_layers=2, d_model=D, d_head=4, n_heads=2, d_mlp=D_MLP, activation_name="gelu",
        eps=1e-5, patch_size=4, image_size=8, n_channels=3, n_classes=C,
        return_type="class_logits", use_wandb=False,
    ), **overrides})


@torch.no_grad()
def memory_vit(**overrides):
    """Class c reads coordinate c. Value v (MLP row or flattened W_O row) is (v + 1) e_{v mod 5},
    so class c's values are those with v mod 5 == c, largest v first. Keys do not depend on the
    image: MLP hidden units are GELU(b_in) (W_in = 0) and attention keys are the per-head value
    bias b_V (W_V = 0; attention weights sum to one)."""
    model = build_hooked_vit(_config(**overrides), seed=0).eval()
    model.head.W_H.zero_()
    model.head.W_H[:C, :C] = torch.eye(C)
    for block in model.blocks:
        rows = torch.zeros(D_MLP, D)
        rows[torch.arange(D_MLP), torch.arange(D_MLP) % C] = torch.arange(D_MLP) + 1.0
        block.mlp.W_out.copy_(rows)
        block.mlp.b_out.zero_()
        block.mlp.W_in.zero_()
        block.mlp.b_in.zero_()
        block.mlp.b_in[10] = 10.0  # top-2 keys: 10 (class 0) and 6 (class 1)
        block.mlp.b_in[6] = 9.0
        rows = torch.zeros(8, D)
        rows[torch.arange(8), torch.arange(8) % C] = torch.arange(8) + 1.0
        block.attn.W_O.copy_(rows.reshape(2, 4, D))
        block.attn.W_V.zero_()
        block.attn.b_V.zero_()
        block.attn.b_V[1, 1] = 3.0  # flattened key 5 (class 0)
        block.attn.b_V[0, 1] = 2.0  # flattened key 1 (class 1)
    return model


def test_attention_values_are_w_o_rows_flattened_over_heads():
    model = memory_vit()
    values = value_vectors(model, layer=0, kind="attn")
    assert values.shape == (8, D)
    torch.testing.assert_close(values[1 * 4 + 2], model.blocks[0].attn.W_O[1, 2])
    with pytest.raises(ValueError, match="'attn' or 'mlp'"):
        value_vectors(model, layer=0, kind="head")


def test_value_class_projection_by_hand():
    model = memory_vit()
    raw = value_class_projection(model, layer=0, kind="mlp", normalize=False)
    assert raw[0, 10].item() == 11.0 and raw[1, 10].item() == 0.0
    cosine = value_class_projection(model, layer=0, kind="mlp", normalize=True)
    assert cosine.max().item() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["mlp", "attn"])
def test_class_value_agreement_against_random_control(kind):
    model = memory_vit()
    control = build_hooked_vit(_config(), seed=3).eval()
    result = class_value_agreement(model, control, kind=kind)
    # Every class embedding is exactly one value direction: best cosine 1 for all classes.
    torch.testing.assert_close(result.trained, torch.ones(2))
    assert (result.control < 0.99).all()
    # One-sided Wilcoxon with all 5 differences positive: exact p = 1 / 2^5.
    torch.testing.assert_close(result.p_value, torch.full((2,), 1 / 32, dtype=result.p_value.dtype))


def test_key_value_agreement_and_compositionality_by_hand():
    model = memory_vit()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    mlp = memory_agreement(model, images, labels=labels, kind="mlp", k=2, progress=False)
    # Keys {10, 6}; top-2 values: class 0 {15, 10}, class 1 {11, 6}, class 2 {12, 7}.
    torch.testing.assert_close(mlp.key_value_all, torch.full((2,), 200 / 3))
    torch.testing.assert_close(mlp.key_value_cls, torch.full((2,), 200 / 3))
    # MLP output 10*11 e_0 + 9*7 e_1 (GELU(x) ~ x here) -> top-1 class 0, the class of key 10.
    torch.testing.assert_close(mlp.compositionality, torch.full((2,), 100.0))
    attn = memory_agreement(model, images, labels=labels, kind="attn", k=2, progress=False)
    # Keys {5, 1}; top-2 values: class 0 {5, 0}, class 1 {6, 1}, class 2 {7, 2}.
    torch.testing.assert_close(attn.key_value_all, torch.full((2,), 200 / 3))
    assert ((attn.key_value_control >= 0) & (attn.key_value_control <= 100)).all()


def test_mean_pooled_compositionality_reads_the_mlp_output_through_ln2():
    model = memory_vit(classification_type="gaap")
    with torch.no_grad():
        for block in model.blocks:
            block.ln2.b[3] = 5.0  # LN2(110 e_0 + 63 e_1) = (2.25, 1.05, -0.55, 4.45, ...)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mlp = memory_agreement(model, images, labels=torch.tensor([0, 1]), kind="mlp", k=2,
                           progress=False)
    # Through ln2 the MLP output's top class is 3, not the class (0 or 1) of a top key.
    torch.testing.assert_close(mlp.compositionality, torch.zeros(2))
    assert mlp.key_value_cls.isnan().all()  # no CLS token


def test_memory_agreement_checks(tiny_vit, tiny_images):
    with pytest.raises(ValueError, match=r"k must be in \[1, 32\]"):
        memory_agreement(tiny_vit, tiny_images, labels=torch.zeros(4, dtype=torch.long),
                         kind="mlp", k=40, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        memory_agreement(tiny_vit, tiny_images, labels=torch.full((4,), 9), kind="mlp",
                         progress=False)
