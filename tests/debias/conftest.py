"""A hand-built model whose decision provably routes a planted marker through one SAE latent.

Images are constant per channel: channel 0 is the digit evidence `a` (+1 for class 1, -1 for
class 0), channel 1 the marker `m` (1 present, 0 absent). The blocks are the identity (all their
weights zero), the patch embedding writes `v = (a, m, -a, -m, 0, 0, 0, 0)` on every token, and
the head reads `logit_1 - logit_0 = 2 (a + 2 m) / std(v)` after the final LayerNorm (v has mean
zero). The marker therefore flips class-0 images to class 1. The SAE at block 0 has the latents
`+marker` (0), `-marker` (1), `+digit` (2), `-digit` (3) and two that never fire, with decoder =
encoder transpose, so it reconstructs `v` exactly and the marker reaches the logits only through
latent 0.
"""

import math

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.hosts.prisma import build_hooked_vit
from tests.conftest import tiny_vit_config

HOOK = "blocks.0.hook_resid_post"
MARKER_LATENT = 0


def planted_model():
    cfg = tiny_vit_config(n_layers=2, d_model=8, d_head=4, n_heads=2, d_mlp=8, n_classes=2,
                          classification_type="gaap")
    model = build_hooked_vit(cfg, seed=0).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Blocks and position embedding zero; LayerNorm gains (".w") stay 1.
            if name.startswith(("blocks.", "pos_embed")) and not name.endswith(".w"):
                param.zero_()
        proj = model.embed.proj
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[0, 0] = 1 / 16
        proj.weight[2, 0] = -1 / 16
        proj.weight[1, 1] = 1 / 16
        proj.weight[3, 1] = -1 / 16
        direction = torch.tensor([1.0, 2.0, -1.0, -2.0, 0, 0, 0, 0]) / 2
        model.head.W_H.copy_(torch.stack([-direction, direction], 1))
        model.head.b_H.zero_()
    return model


def planted_sae():
    d_in, d_sae = 8, 6
    sae = StandardSAE(StandardSAEConfig(
        d_in=d_in, d_sae=d_sae, normalize_activations="none", apply_b_dec_to_input=False,
        metadata=SAEMetadata(model_name="planted", hook_name=HOOK, hook_head_index=None)))
    e = torch.eye(d_in)
    r = 1 / math.sqrt(2)
    directions = torch.stack([(e[1] - e[3]) * r, (e[3] - e[1]) * r, (e[0] - e[2]) * r,
                              (e[2] - e[0]) * r, e[4], e[5]])  # [d_sae, d_in]
    with torch.no_grad():
        sae.W_dec.copy_(directions)
        sae.W_enc.copy_(directions.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def planted_images(labels, markers, *, noise_seed=None, evidence=None):
    """`evidence`: the digit channel `a` per image (default +1 for class 1, -1 for class 0)."""
    n = len(labels)
    images = torch.zeros(n, 3, 8, 8)
    a = 2.0 * labels - 1 if evidence is None else torch.as_tensor(evidence, dtype=torch.float)
    images[:, 0] = a[:, None, None]
    images[:, 1] = markers.float()[:, None, None]
    if noise_seed is not None:  # the third channel is ignored by the model
        images[:, 2] = torch.rand(n, 8, 8, generator=torch.Generator().manual_seed(noise_seed))
    return images


def planted_split(labels, markers, *, noise_seed=None, evidence=None) -> SpuriousSplit:
    """The marker names class 1 when present, class 0 when absent."""
    labels, markers = torch.as_tensor(labels), torch.as_tensor(markers)
    return SpuriousSplit(planted_images(labels, markers, noise_seed=noise_seed,
                                        evidence=evidence), labels, markers.long())


def all_groups(copies: int, *, noise_seed=None) -> SpuriousSplit:
    labels = torch.tensor([0, 0, 1, 1] * copies)
    markers = torch.tensor([0, 1, 0, 1] * copies)
    return planted_split(labels, markers, noise_seed=noise_seed)


@pytest.fixture
def planted():
    model = planted_model()
    saes = {HOOK: planted_sae()}
    return model, saes, Baselines.zeros(saes, n_tokens=4)
