"""Feature types: eta squared and its null by hand, and SAEs with planted detectors."""

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from rrm_plugin.features.probes import probe_families
from rrm_plugin.features.types import eta_squared, feature_types, permutation_test
from rrm_plugin.features.types_rule import FACTORS, assign_types
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.zoo.models import DIGITS_DATA
from tests.conftest import tiny_vit_config


def test_eta_squared_known_answers_and_numpy_oracle():
    groups = torch.tensor([0, 0, 1, 1])
    values = torch.tensor([[0.0, 0.0, 5.0], [0.0, 2.0, 5.0], [2.0, 0.0, 5.0], [2.0, 2.0, 5.0]])
    assert eta_squared(values, groups, 2).tolist() == [1.0, 0.0, 0.0]
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(40, 3)), rng.integers(0, 4, 40)
    for f in range(3):
        col = x[:, f]
        between = sum((g == j).sum() * (col[g == j].mean() - col.mean()) ** 2
                      for j in range(4) if (g == j).any())
        expected = between / ((col - col.mean()) ** 2).sum()
        got = eta_squared(torch.tensor(x), torch.tensor(g), 4)[f]
        assert float(got) == pytest.approx(expected, rel=1e-9)


def test_permutation_null():
    groups = torch.arange(4).repeat_interleave(10)
    signal = groups.double()[:, None] + 0.01 * torch.randn(40, 1, dtype=torch.float64,
                                                           generator=torch.Generator().manual_seed(0))
    noise = torch.randn(40, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eta, null, p = permutation_test(torch.cat([signal, noise], 1), groups, 4,
                                    n_permutations=99, generator=torch.Generator().manual_seed(2))
    assert eta[0] > 0.99 and p[0] == pytest.approx(0.01)  # nothing in the null reaches it
    # Null eta squared of pure noise with 4 groups of 10 is about (4 - 1) / (40 - 1).
    assert abs(float(null[1]) - 3 / 39) < 0.03
    assert p[1] > 0.05


def test_assign_types_rule():
    n = len(FACTORS)
    eta = torch.zeros(5, n)
    index = {f: i for i, f in enumerate(FACTORS)}
    eta[0, index["hue"]] = 0.8                       # colour
    eta[1, index["position_token"]] = 0.5            # position
    eta[2, index["orientation"]], eta[2, index["curve"]] = 0.6, 0.5   # no margin: mixed
    eta[3, index["digit"]] = 0.2                     # below MIN_EXCESS: mixed
    eta[4, index["hue"]] = 0.9                       # but never fires: dead
    p = torch.full((5, n), 0.005)
    fire = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0])
    _, types = assign_types(eta, torch.zeros(5, n), p, fire)
    assert types == ["colour", "position", "mixed", "mixed", "dead"]
    _, types = assign_types(eta, torch.zeros(5, n), torch.full((5, n), 0.5), fire)
    assert types[:2] == ["mixed", "mixed"]  # not significant


TOKEN = 8  # patch (row 1, col 1): pixels 4-7, the digit's ink reaches it only near the corner


@torch.no_grad()
def planted_model_and_sae():
    """One-block ViT whose block output is embed + pos (attention/MLP zeroed) and an SAE with
    planted detectors: red foreground, ink at one patch, bright-above-dark horizontal edges,
    and a random direction."""
    cfg = tiny_vit_config(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=8, image_size=24,
                          patch_size=4, n_classes=10)
    model = build_hooked_vit(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    w = 0.3 * torch.randn(8, 3, 4, 4, generator=g)  # dims 3..7: random filters
    w[:3] = 0.0
    w[0, 0], w[0, 1], w[0, 2] = 1 / 16, -0.5 / 16, -0.5 / 16          # red minus cyan
    w[1] = 1 / 48                                                     # brightness
    w[2, :, :2], w[2, :, 2:] = 1 / 24, -1 / 24                        # top rows minus bottom
    model.embed.proj.weight.copy_(w)
    model.embed.proj.bias.zero_()
    pos = 0.3 * torch.randn(37, 8, generator=g)
    pos[:, :3] = 0.0
    pos[:, 1] = -1.0
    pos[1 + TOKEN, 1] = -0.25  # only a well-inked patch at TOKEN passes the gate
    model.pos_embed.W_pos.copy_(pos)
    model.cls_token.zero_()
    for block in model.blocks:
        block.attn.W_O.zero_()
        block.attn.b_O.zero_()
        block.mlp.W_out.zero_()
        block.mlp.b_out.zero_()
    sae = StandardSAE(StandardSAEConfig(
        d_in=8, d_sae=4, apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post", model_name="planted")))
    directions = torch.zeros(4, 8)
    directions[0, 0] = directions[1, 1] = directions[2, 2] = 1.0
    directions[3] = torch.randn(8, generator=g)
    directions[3] /= directions[3].norm()
    sae.W_enc.copy_(directions.T)
    sae.W_dec.copy_(directions)
    sae.b_enc.zero_()
    sae.b_dec.zero_()
    return model, {"blocks.0.hook_resid_post": sae}


def test_planted_detectors_get_their_types():
    model, saes = planted_model_and_sae()
    result = feature_types(model, saes, n_permutations=100, progress=False)
    layer = result.layers["blocks.0.hook_resid_post"]
    assert layer.types[:3] == ["colour", "position", "orientation"], \
        (layer.types, layer.group_scores)
    # Feature 3 is a random direction, a draw from the same distribution as the null's random
    # latents (this SAE has no TopK and no normalisation, so a latent is ReLU(x . w)): in no group
    # does it beat every one of the 256 random latents; and the rule types few random latents,
    # at most about 1% per group over 5 groups (quantile 0.99 of 256, ties and margin aside).
    random = layer.random_scores
    assert (layer.group_scores[3] <= random.amax(0)).all(), (layer.group_scores[3], random.amax(0))
    typed = sum(t not in ("mixed", "dead") for t in layer.random_types) / len(layer.random_types)
    assert typed <= 5 * 3 / 256, layer.random_types
    # The planted detectors beat every random latent in their own group.
    for f, group in enumerate((1, 0, 2)):  # colour, position, orientation columns
        assert layer.group_scores[f, group] > random[:, group].max()
    # The edge detector prefers horizontal bars (0 and 180 degrees) to vertical ones.
    tuning = layer.orientation_tuning[2]
    assert tuning[0] > 2 * tuning[6]


def test_probe_families_vary_only_their_factor():
    fams = probe_families(DIGITS_DATA, repeats=4, seed=1)
    hue = fams["hue"]
    # Same level, same hue of the brightest pixel (the digit's ink at alpha 1).
    from matplotlib.colors import rgb_to_hsv

    for level in (0, 5):
        imgs = hue.images[hue.levels == level]
        flat = imgs.permute(0, 2, 3, 1).reshape(len(imgs), -1, 3)
        best = flat[torch.arange(len(imgs)), flat.sum(-1).argmax(1)].numpy()
        hues = rgb_to_hsv(best)[:, 0]
        circ = np.minimum(np.abs(hues - level / 12), 1 - np.abs(hues - level / 12))
        assert circ.max() < 0.02
    assert len(fams["curve"].images) == 5 * 8 * 2


def test_feature_types_refuses_other_canvases(tiny_vit, tiny_saes):
    with pytest.raises(ValueError, match="feature types need a digits-canvas model"):
        feature_types(tiny_vit, tiny_saes, progress=False)
