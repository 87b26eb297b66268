"""Fixtures of the lens tests: hand-built HookedViTs whose class-space projections are known."""

from types import SimpleNamespace

import pytest
import torch
from vit_prisma.configs.HookedViTConfig import HookedViTConfig

from rrm_plugin.hosts.prisma import build_hooked_vit

D = 6  # d_model == n_classes, head = identity: class c reads coordinate c


def hand_config(**overrides) -> HookedViTConfig:
    base = dict(
        n_layers=2, d_model=D, d_head=3, n_heads=2, d_mlp=8, activation_name="gelu", eps=1e-5,
        patch_size=4, image_size=8, n_channels=3, n_classes=D, return_type="class_logits",
        use_wandb=False,
    )
    base.update(overrides)
    return HookedViTConfig(**base)


# Residual of every token (rows): a permutation of 0..D-1, so after the final LayerNorm (w=1, b=0)
# and the identity head, class c's rank at token t is D - 1 - TOKEN_VALUES[t, c].
TOKEN_VALUES = torch.tensor([
    [5, 4, 3, 2, 1, 0],
    [0, 1, 2, 3, 4, 5],
    [2, 5, 0, 1, 3, 4],
    [3, 0, 5, 4, 2, 1],
    [1, 2, 4, 5, 0, 3],
], dtype=torch.float32)

# Block 1's MLP adds this constant to every token (blocks' attention adds nothing).
BLOCK1_SHIFT = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 10.0])


@torch.no_grad()
def make_hand_vit():
    """Every token's residual is independent of the image: block 0 keeps TOKEN_VALUES, block 1
    adds BLOCK1_SHIFT (class 5 then ranks first everywhere)."""
    model = build_hooked_vit(hand_config(), seed=0).eval()
    model.embed.proj.weight.zero_()
    model.embed.proj.bias.zero_()
    model.cls_token.zero_()
    model.pos_embed.W_pos.copy_(TOKEN_VALUES)
    for block in model.blocks:
        block.attn.W_O.zero_()
        block.attn.b_O.zero_()
        block.mlp.W_out.zero_()
        block.mlp.b_out.zero_()
    model.blocks[1].mlp.b_out.copy_(BLOCK1_SHIFT)
    model.ln_final.w.fill_(1.0)
    model.ln_final.b.zero_()
    model.head.W_H.copy_(torch.eye(D))
    model.head.b_H.zero_()
    return model


@pytest.fixture
def hand():
    """The hand-built model with its constants."""
    return SimpleNamespace(model=make_hand_vit(), values=TOKEN_VALUES, shift=BLOCK1_SHIFT,
                           config=hand_config, d=D)


@pytest.fixture
def hand_images():
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
