"""Chefer et al.'s gradient-weighted attention rollout (the authors' comparison ranking)."""

import pytest
import torch

from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.lens.importance import chefer_rollout_importance
from tests.conftest import tiny_vit_config
from tests.lens.test_lens_importance import C, patch_class_vit


def _pattern_and_grad(model, image, *, label: int, block: int):
    """Block `block`'s attention pattern of one image and d logit_label / d pattern, with the
    pattern made a leaf in that block only (later blocks still see its effect on their inputs)."""
    leaf = {}

    def as_leaf(pattern, hook):
        leaf["A"] = pattern.detach().requires_grad_(True)
        return leaf["A"]

    with torch.enable_grad():
        logits = model.run_with_hooks(image[None],
                                      fwd_hooks=[(f"blocks.{block}.attn.hook_pattern", as_leaf)])
        (grad,) = torch.autograd.grad(logits[0, label], leaf["A"])
    return leaf["A"][0].detach(), grad[0]


def rollout_by_hand(model, image, *, label: int, n_prefix: int) -> list[float]:
    """R = I; per block R <- R + Abar R with Abar[i][k] = mean_h max(0, G[h,i,k] A[h,i,k]);
    written with plain loops over heads and tokens."""
    n_heads = model.cfg.n_heads
    relevance = None
    for b in range(model.cfg.n_layers):
        a, g = _pattern_and_grad(model, image, label=label, block=b)
        n = a.shape[-1]
        if relevance is None:
            relevance = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
        abar = [[sum(max(0.0, float(g[h, i, k] * a[h, i, k])) for h in range(n_heads)) / n_heads
                 for k in range(n)] for i in range(n)]
        relevance = [[relevance[i][j] + sum(abar[i][k] * relevance[k][j] for k in range(n))
                      for j in range(n)] for i in range(n)]
    return relevance[0][n_prefix:]


@torch.no_grad()
def _sharp_vit(*, n_registers: int):
    """A tiny ViT with its weight matrices scaled up 15x: non-uniform attention and relevance
    terms of order 0.1, so products across blocks (their order) are well above tolerance."""
    from rrm_plugin.hosts.vit import ExtendedViTConfig

    cfg = ExtendedViTConfig(**{**vars(tiny_vit_config()), "n_registers": n_registers})
    model = build_hooked_vit(cfg, seed=0).eval()
    for param in model.parameters():
        if param.ndim >= 2:
            param.mul_(15)
    return model


@pytest.mark.parametrize("register", [False, True])
def test_rollout_matches_a_hand_computation(tiny_images, register):
    model = _sharp_vit(n_registers=2 if register else 0)
    n_prefix = 3 if register else 1  # CLS (+ 2 registers): never scored as patches
    labels = torch.tensor([0, 3, 1, 4])
    fast = chefer_rollout_importance(model, tiny_images, labels=labels, batch_size=3,
                                     progress=False)
    assert fast.shape == (4, 4)
    slow = torch.tensor([
        rollout_by_hand(model, tiny_images[i], label=int(labels[i]), n_prefix=n_prefix)
        for i in range(len(tiny_images))
    ])
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
    assert (fast > 0).any()  # the clamp does not zero everything: the comparison has content


def test_gradient_weighting_and_clamp_on_a_planted_model():
    # One block, uniform attention (plain attention rollout would tie every patch); patch k pushes
    # class k, so attending to the true-class patch raises the true logit and attending to any
    # other patch lowers it (negative gradient x attention, clamped to exactly 0).
    model = patch_class_vit()
    images = torch.rand(C, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(C)
    rollout = chefer_rollout_importance(model, images, labels=labels, progress=False)
    for y in range(C):
        assert rollout[y, y] > 0
        others = torch.cat([rollout[y, :y], rollout[y, y + 1 :]])
        assert torch.equal(others, torch.zeros(C - 1))


def test_rollout_needs_a_cls_token(tiny_images):
    gap = build_hooked_vit(tiny_vit_config(classification_type="gaap"), seed=0)
    with pytest.raises(ValueError, match="CLS token"):
        chefer_rollout_importance(gap, tiny_images, labels=torch.zeros(4, dtype=torch.long),
                                  progress=False)
