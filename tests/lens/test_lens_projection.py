import pytest
import torch

from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.lens.metrics import class_rank
from rrm_plugin.lens.projection import (
    check_labels,
    n_patches,
    project,
    project_cache,
    project_images,
)


def _layer_norm(h, eps=1e-5):
    centred = h - h.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def test_hand_model_projection_is_the_closed_form(hand, hand_images):
    proj = project_images(hand.model, hand_images, batch_size=2, progress=False)
    n_img = len(hand_images)
    expected0 = _layer_norm(hand.values).expand(n_img, -1, -1)
    expected1 = _layer_norm(hand.values + hand.shift).expand(n_img, -1, -1)
    torch.testing.assert_close(proj.embed, expected0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(proj.resid[0], expected0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(proj.resid[1], expected1, atol=1e-5, rtol=1e-5)
    # Zero attention outputs: LN(0) = 0, so the projection is the (zero) head bias.
    assert torch.equal(proj.attn, torch.zeros_like(proj.attn))
    torch.testing.assert_close(proj.mlp[1], _layer_norm(hand.shift).expand(n_img, 5, -1))
    torch.testing.assert_close(proj.resid_prev[1], proj.resid[0])
    torch.testing.assert_close(proj.resid_prev[0], proj.embed)


def test_hand_model_ranks(hand, hand_images):
    proj = project_images(hand.model, hand_images, progress=False)
    labels = torch.tensor([0, 3, 5])
    rank = class_rank(proj.resid, labels=labels)  # [layer, image, token]
    # Block 0: rank = D - 1 - value of the true class at that token.
    by_hand = torch.stack([5 - hand.values[:, y] for y in labels.tolist()]).long()
    assert torch.equal(rank[0], by_hand)
    # Block 1: class 5 is pushed to the top everywhere, the others move down by one.
    assert torch.equal(rank[1, 2], torch.zeros(5, dtype=torch.long))
    assert rank[1, 0].tolist() == [1, 5, 3, 3, 4]
    assert rank[1, 1].tolist() == [4, 2, 4, 2, 1]


def test_projection_uses_the_models_own_ln_and_head_and_matches_its_logits(tiny_vit, tiny_images):
    with torch.no_grad():
        tiny_vit.ln_final.w.uniform_(0.5, 1.5)
        tiny_vit.ln_final.b.normal_()
        tiny_vit.head.b_H.normal_()
        h = torch.randn(7, tiny_vit.cfg.d_model)
        manual = (_layer_norm(h) * tiny_vit.ln_final.w + tiny_vit.ln_final.b) @ tiny_vit.head.W_H
        torch.testing.assert_close(project(tiny_vit, h), manual + tiny_vit.head.b_H)
        proj = project_images(tiny_vit, tiny_images, progress=False)
        # The last block's CLS projection is exactly the model's output.
        torch.testing.assert_close(proj.resid[-1, :, 0], tiny_vit(tiny_images))


def test_project_cache_reads_the_right_hooks(tiny_vit, tiny_images):
    with torch.no_grad():
        _, cache = tiny_vit.run_with_cache(tiny_images)
        proj = project_cache(tiny_vit, cache)
        for layer in range(tiny_vit.cfg.n_layers):
            for kind, hook in (("resid", "hook_resid_post"), ("attn", "hook_attn_out"),
                               ("mlp", "hook_mlp_out")):
                direct = project(tiny_vit, cache[f"blocks.{layer}.{hook}"])
                torch.testing.assert_close(getattr(proj, kind)[layer], direct)
        assert proj.resid.shape == (3, 4, n_patches(tiny_vit) + 1, 5)


def test_batching_does_not_change_the_projection(tiny_vit, tiny_images):
    a = project_images(tiny_vit, tiny_images, batch_size=1, progress=False)
    b = project_images(tiny_vit, tiny_images, batch_size=16, progress=False)
    torch.testing.assert_close(a.resid, b.resid)
    torch.testing.assert_close(a.mlp, b.mlp)


def test_model_without_class_head_is_rejected(hand, tiny_images):
    model = build_hooked_vit(hand.config(return_type="pre_logits"), seed=0)
    with pytest.raises(ValueError, match="class head"):
        project_images(model, tiny_images, progress=False)
    with pytest.raises(TypeError, match="HookedViT"):
        project_images(torch.nn.Linear(2, 2), tiny_images, progress=False)


def test_bad_images_are_rejected(hand):
    with pytest.raises(ValueError, match="8x8"):
        project_images(hand.model, torch.rand(2, 3, 16, 16), progress=False)


def test_label_checks():
    with pytest.raises(ValueError, match="label 7 out of range.*6 classes"):
        check_labels(torch.tensor([0, 7]), n_classes=6, n_images=2)
    with pytest.raises(ValueError, match=r"expected \[3\]"):
        check_labels(torch.tensor([0, 1]), n_classes=6, n_images=3)
    with pytest.raises(TypeError, match="integer tensor"):
        check_labels(torch.tensor([0.0, 1.0]), n_classes=6, n_images=2)
