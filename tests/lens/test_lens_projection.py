import pytest
import torch

from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.lens.metrics import class_rank
from rrm_plugin.lens.probes import compare_with_probes
from rrm_plugin.lens.projection import (
    check_class_head,
    check_labels,
    n_patches,
    project,
    project_cache,
    project_images,
    sublayer_norm,
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


@torch.no_grad()
def _gaap_model(hand):
    """A mean-pooled model whose block and final LayerNorms all have non-trivial weights."""
    model = build_hooked_vit(hand.config(classification_type="gaap"), seed=0).eval()
    gen = torch.Generator().manual_seed(5)
    for ln in [model.ln_final] + [ln for block in model.blocks for ln in (block.ln1, block.ln2)]:
        ln.w.copy_(0.5 + torch.rand(ln.w.shape, generator=gen))
        ln.b.copy_(torch.randn(ln.b.shape, generator=gen))
    model.head.W_H.copy_(torch.eye(hand.d))  # class c reads coordinate c
    model.head.b_H.copy_(0.1 * torch.randn(model.head.b_H.shape, generator=gen))
    return model


def test_mean_pooled_models_pass_sublayer_outputs_through_the_blocks_own_norm(hand, hand_images):
    model = _gaap_model(hand)

    def by_hand(h, *norms):  # LayerNorm(s) with weights, written out, then the head
        for ln in norms:
            h = _layer_norm(h) * ln.w + ln.b
        return h @ model.head.W_H + model.head.b_H

    with torch.no_grad():
        proj = project_images(model, hand_images, batch_size=2, progress=False)
        _, cache = model.run_with_cache(hand_images)
        for b, block in enumerate(model.blocks):
            attn, mlp = cache[f"blocks.{b}.hook_attn_out"], cache[f"blocks.{b}.hook_mlp_out"]
            resid = cache[f"blocks.{b}.hook_resid_post"]
            torch.testing.assert_close(proj.attn[b], by_hand(attn, block.ln1, model.ln_final))
            torch.testing.assert_close(proj.mlp[b], by_hand(mlp, block.ln2, model.ln_final))
            torch.testing.assert_close(proj.resid[b], by_hand(resid, model.ln_final))
            assert not torch.allclose(proj.attn[b], by_hand(attn, model.ln_final))
        torch.testing.assert_close(
            proj.embed, by_hand(cache["blocks.0.hook_resid_pre"], model.ln_final))


def test_sublayer_norm_leaves_cls_models_and_residuals_alone(tiny_vit, hand):
    h = torch.randn(2, 5, tiny_vit.cfg.d_model)
    for kind in ("resid", "attn", "mlp"):
        assert sublayer_norm(tiny_vit, h, layer=1, kind=kind) is h
    gaap = _gaap_model(hand)
    h = torch.randn(2, 5, hand.d)
    assert sublayer_norm(gaap, h, layer=1, kind="resid") is h
    with pytest.raises(ValueError, match="kind must be"):
        sublayer_norm(tiny_vit, h, layer=1, kind="mlp_out")


def test_probe_comparison_reads_the_same_projection_on_mean_pooled_models(hand):
    model = _gaap_model(hand)
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    proj = project_images(model, images, progress=False)
    # Labels: the top class of block 1's attention output at token 0, read through ln1; read
    # without it, the top class differs for some image (so the check below can tell them apart).
    labels = proj.attn[1, :, 0].argmax(-1)
    with torch.no_grad():
        _, cache = model.run_with_cache(images)
        raw = project(model, cache["blocks.1.hook_attn_out"][:, 0]).argmax(-1)
    assert (raw != labels).any()
    comparison = compare_with_probes(
        model, train_images=images, train_labels=labels, test_images=images,
        test_labels=labels, progress=False)
    assert comparison.projection_accuracy[1, 1, 0] == 100.0
    for k, kind in enumerate(comparison.kinds):
        correct = getattr(proj, kind).argmax(-1) == labels[None, :, None]  # [layer, image, pos]
        torch.testing.assert_close(comparison.projection_accuracy[k],
                                   100 * correct.float().mean(1))


def test_batching_does_not_change_the_projection(tiny_vit, tiny_images):
    a = project_images(tiny_vit, tiny_images, batch_size=1, progress=False)
    b = project_images(tiny_vit, tiny_images, batch_size=16, progress=False)
    torch.testing.assert_close(a.resid, b.resid)
    torch.testing.assert_close(a.mlp, b.mlp)


def test_model_without_class_head_is_rejected(hand, tiny_images):
    model = build_hooked_vit(hand.config(return_type="pre_logits"), seed=0)
    with pytest.raises(ValueError) as err:
        project_images(model, tiny_images, progress=False)
    assert str(err.value) == ("model has return_type='pre_logits'; the class-embedding lens needs "
                              "a class head (return_type='class_logits', head.W_H [d_model, "
                              "n_classes])")
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


def test_label_bounds_and_messages():
    assert check_labels(torch.tensor([0, 5]), n_classes=6, n_images=2).tolist() == [0, 5]
    with pytest.raises(ValueError) as err:
        check_labels(torch.tensor([6, 0]), n_classes=6, n_images=2)
    assert str(err.value) == ("label 6 out of range: the model has 6 classes "
                              "(labels must be in [0, 5])")
    with pytest.raises(TypeError) as err:
        check_labels([0, 1], n_classes=6, n_images=2)
    assert str(err.value) == "labels must be an integer tensor of shape [2], got list"


def test_class_head_checks(hand):
    check_class_head(build_hooked_vit(hand.config(n_classes=2), seed=0))  # two classes are enough
    with pytest.raises(TypeError) as err:
        check_class_head(torch.nn.Linear(2, 2))
    assert str(err.value) == "model must be a vit_prisma HookedViT, got Linear"
    with pytest.raises(ValueError, match="at least 2 classes"):
        check_class_head(build_hooked_vit(hand.config(n_classes=1), seed=0))
    with pytest.raises(ValueError) as err:
        check_class_head(build_hooked_vit(hand.config(attn_only=True), seed=0))
    assert str(err.value) == ("the lens needs pre-LN blocks with attention and MLP (got attn_only "
                              "or use_bert_block=True)")
