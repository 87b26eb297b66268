"""Fixtures of the attribution tests: a tiny HookedViT whose non-linearities matter.

The default initialisation (std 0.02) leaves attention uniform and GELU near-linear; scaling the
weights makes the linearisation (and any mistake in it) visible.
"""

import pytest
import torch

from rrm_plugin.attribution.baselines import compute_baselines
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.saes.training import new_topk_sae
from tests.conftest import tiny_vit_config


def sharp_vit(**overrides):
    model = build_hooked_vit(tiny_vit_config(**overrides), seed=0).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and not name.startswith("embed"):
                param.mul_(12.0)
    return model


def random_saes(model, *, d_sae=32, k=4, layers=None):
    layers = range(model.cfg.n_layers - 1) if layers is None else layers
    return {
        f"blocks.{layer}.hook_resid_post": new_topk_sae(
            d_in=model.cfg.d_model, d_sae=d_sae, k=k, hook_name=f"blocks.{layer}.hook_resid_post",
            model_name="tiny", seed=layer + 1)
        for layer in layers
    }


@pytest.fixture
def vit():
    return sharp_vit()


@pytest.fixture
def saes(vit):
    return random_saes(vit)


@pytest.fixture
def images():
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def reference_images():
    return torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def baselines(vit, saes, reference_images):
    return compute_baselines(vit, saes, reference_images, statistic="median", progress=False)


@pytest.fixture
def mean_baselines(vit, saes, reference_images):
    return compute_baselines(vit, saes, reference_images, statistic="mean", progress=False)


def prisma_like_saes(model, *, kind: str, d_sae=24):
    """SAEs shaped like ViT-Prisma's CLIP releases, random weights, every bias non-zero.

    `"relu"`: SAELens `StandardSAE`, no input normalisation, all tokens (the vanilla series).
    `"topk_cls"`: `TopKSAE` on the class token only (`seqpos_slice=(0, 1)`), layer norm.
    """
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d = model.cfg.d_model
    saes = {}
    for layer in range(model.cfg.n_layers - 1):
        hook = f"blocks.{layer}.hook_resid_post"
        meta = dict(model_name="tiny", hook_name=hook, hook_head_index=None)
        if kind == "relu":
            sae = StandardSAE(StandardSAEConfig(
                d_in=d, d_sae=d_sae, apply_b_dec_to_input=True, normalize_activations="none",
                metadata=SAEMetadata(**meta)))
        else:
            sae = TopKSAE(TopKSAEConfig(
                d_in=d, d_sae=d_sae, k=5, apply_b_dec_to_input=True,
                normalize_activations="layer_norm",
                metadata=SAEMetadata(**meta, seqpos_slice=(0, 1))))
        g = torch.Generator().manual_seed(10 + layer)
        with torch.no_grad():
            sae.W_dec.copy_(torch.randn(d_sae, d, generator=g) / d**0.5)
            sae.W_enc.copy_(torch.randn(d, d_sae, generator=g) / d**0.5)
            sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.3)
            sae.b_dec.copy_(torch.randn(d, generator=g) * 0.3)
        saes[hook] = sae
    return saes
