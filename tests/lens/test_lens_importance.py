import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vit_prisma.configs.HookedViTConfig import HookedViTConfig

from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.lens.importance import (
    attention_gradient_importance,
    check_order,
    importance_by_block,
    importance_order,
    keep_tokens_hook,
    kept_patches,
    least_important_object_share,
    perturbation_auc,
    perturbation_curve,
    random_order,
)
from rrm_plugin.lens.projection import project

D, C = 6, 4


@torch.no_grad()
def patch_class_vit():
    """One block; patch k's residual is 3 e_k and class c reads coordinate c, so the CLS token's
    attention output moves towards class k when it attends more to patch k. Attention is uniform
    (W_Q = W_K = 0), values and output are identities, the MLP adds nothing."""
    cfg = HookedViTConfig(
        n_layers=1, d_model=D, d_head=D, n_heads=1, d_mlp=8, activation_name="gelu", eps=1e-5,
        patch_size=4, image_size=8, n_channels=3, n_classes=C, return_type="class_logits",
        use_wandb=False,
    )
    model = build_hooked_vit(cfg, seed=0).eval()
    model.embed.proj.weight.zero_()
    model.embed.proj.bias.zero_()
    model.cls_token.zero_()
    model.pos_embed.W_pos.zero_()
    model.pos_embed.W_pos[1:, :C] = 3 * torch.eye(C)
    attn = model.blocks[0].attn
    for w in (attn.W_Q, attn.W_K, attn.b_Q, attn.b_K, attn.b_V, attn.b_O):
        w.zero_()
    attn.W_V.copy_(torch.eye(D)[None])
    attn.W_O.copy_(torch.eye(D)[None])
    model.blocks[0].mlp.W_out.zero_()
    model.blocks[0].mlp.b_out.zero_()
    model.head.W_H.zero_()
    model.head.W_H[:C, :C] = torch.eye(C)
    model.head.b_H.zero_()
    return model


def test_auc_of_known_curves():
    # curve[k] = accuracy with k of N = 4 patches removed; curve[0] is the unperturbed model.
    curve = torch.tensor([0.9, 0.8, 0.6, 0.2])
    # Authors: points k = 1..3 only, their max 0.8, divisor N = 4: (0.8+0.6+0.2) / (4 * 0.8).
    assert perturbation_auc(curve) == pytest.approx(0.5)
    assert perturbation_auc(curve, normalisation="authors") == pytest.approx(0.5)
    # Inclusive: (0.9+0.8+0.6+0.2) / (4 * 0.9).
    assert perturbation_auc(curve, normalisation="inclusive") == pytest.approx(2.5 / 3.6)
    assert perturbation_auc(torch.ones(10)) == pytest.approx(0.9)  # 9 points / (10 * 1)
    assert perturbation_auc(torch.ones(10), normalisation="inclusive") == pytest.approx(1.0)
    half = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert perturbation_auc(half, normalisation="inclusive") == pytest.approx(0.5)
    assert perturbation_auc(half) == pytest.approx(0.25)  # 0.5 / (4 * 0.5)
    assert math.isnan(perturbation_auc(torch.zeros(3)))
    assert math.isnan(perturbation_auc(torch.tensor([1.0, 0.0, 0.0])))  # perturbed points all 0
    with pytest.raises(ValueError, match="1-D"):
        perturbation_auc(torch.ones(2, 2))
    with pytest.raises(ValueError, match="at least 2"):
        perturbation_auc(torch.ones(1))
    with pytest.raises(ValueError, match="'authors' or 'inclusive'"):
        perturbation_auc(curve, normalisation="trapezoid")


def test_authors_auc_reproduces_their_formula_on_their_kept_counts():
    # The authors' script stores accuracy for n = 1 .. N-1 patches *kept*, flips it to
    # "n removed = 1 .. N-1" order and prints np.sum(acc) / (np.max(acc) * N).
    n = 7
    curve = torch.rand(n, generator=torch.Generator().manual_seed(3)).sort(descending=True).values
    curve[0] = 1.0  # the unperturbed accuracy, larger than every perturbed point
    accs = np.array([float(curve[n - kept]) for kept in range(1, n)])  # their list, kept = 1..N-1
    flipped = accs[::-1]
    expected = np.sum(flipped) / (np.max(flipped) * n)
    assert perturbation_auc(curve) == pytest.approx(expected)


def test_kept_patches_and_orders():
    order = torch.tensor([[2, 0, 1, 3]])
    assert kept_patches(order, n_removed=1, mode="negative").tolist() == [[2, 0, 1]]
    assert kept_patches(order, n_removed=1, mode="positive").tolist() == [[0, 1, 3]]
    assert importance_order(torch.tensor([[0.1, 0.9, -1.0]])).tolist() == [[1, 0, 2]]
    rnd = random_order(5, 7, seed=0)
    assert torch.equal(rnd.sort(-1).values, torch.arange(7).expand(5, -1))
    assert not torch.equal(rnd[0], rnd[1])


def test_shared_random_orders():
    orders = [random_order(6, 9, seed=s, shared=True) for s in range(4)]
    for order in orders:
        assert torch.equal(order.sort(-1).values, torch.arange(9).expand(6, -1))
        assert (order == order[0]).all()  # one permutation for every image
    # A different permutation for every seed, the same one again for the same seed.
    assert len({tuple(o[0].tolist()) for o in orders}) == 4
    assert torch.equal(random_order(6, 9, seed=2, shared=True), orders[2])
    assert torch.equal(random_order(6, 9, seed=2), random_order(6, 9, seed=2))
    # Rows are independent copies, not views of one row.
    order = orders[0]
    order[0, 0] = -1
    assert order[1, 0] != -1


def test_object_share_of_the_least_important_patches():
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])  # most to least important
    mask = torch.tensor([[False, False, True, True], [True, False, False, False]])
    # Last quarter (one patch): patch 3 of image 0 (object), patch 0 of image 1 (object).
    assert least_important_object_share(order, object_mask=mask) == pytest.approx(1.0)
    # Last half: {2, 3} of image 0 (both object), {1, 0} of image 1 (one object): 3 / 4.
    assert least_important_object_share(order, object_mask=mask, fraction=0.5) == 0.75
    assert least_important_object_share(order, object_mask=mask, fraction=1.0) == 0.375
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"^fraction must be in \(0, 1\], got {fraction}$"):
            least_important_object_share(order, object_mask=mask, fraction=fraction)
    with pytest.raises(ValueError, match="object_mask has shape"):
        least_important_object_share(order, object_mask=mask[:, :3])


def test_removal_hook_equals_running_the_blocks_on_the_kept_tokens(tiny_vit, tiny_images):
    keep = torch.tensor([[3, 0], [1, 2], [0, 1], [2, 3]])
    with torch.no_grad():
        hook = keep_tokens_hook(keep, n_prefix=1)
        hooked = tiny_vit.run_with_hooks(tiny_images, fwd_hooks=[("blocks.0.hook_resid_pre", hook)])
        _, cache = tiny_vit.run_with_cache(tiny_images, names_filter="blocks.0.hook_resid_pre")
        full = cache["blocks.0.hook_resid_pre"]
        x = torch.stack([torch.cat([full[i, :1], full[i, keep[i] + 1]]) for i in range(4)])
        for block in tiny_vit.blocks:
            x = block(x)
        manual = project(tiny_vit, x[:, 0])
    torch.testing.assert_close(hooked, manual)


def test_importance_matches_a_per_image_per_block_recomputation(tiny_vit, tiny_images):
    labels = torch.tensor([0, 1, 2, 4])
    fast = importance_by_block(tiny_vit, tiny_images, labels=labels, batch_size=3,
                               progress=False)
    total = attention_gradient_importance(tiny_vit, tiny_images, labels=labels, progress=False)
    torch.testing.assert_close(total, fast.sum(0))
    # The loss setting is passed on (and changes the result).
    plain = importance_by_block(tiny_vit, tiny_images, labels=labels, softmax_before_ce=False,
                                progress=False).sum(0)
    assert not torch.allclose(plain, total)
    torch.testing.assert_close(attention_gradient_importance(
        tiny_vit, tiny_images, labels=labels, softmax_before_ce=False, progress=False), plain)
    n_layers = tiny_vit.cfg.n_layers
    slow = torch.zeros_like(fast)
    for i in range(len(tiny_images)):
        for b in range(n_layers):
            leaf, out = {}, {}

            def as_leaf(pattern, hook, leaf=leaf):
                leaf["A"] = pattern.detach().requires_grad_(True)
                return leaf["A"]

            def keep(tensor, hook, out=out):
                out["attn"] = tensor
                return tensor

            with torch.enable_grad():
                hooks = [(f"blocks.{b}.attn.hook_pattern", as_leaf),
                         (f"blocks.{b}.hook_attn_out", keep)]
                tiny_vit.run_with_hooks(tiny_images[i : i + 1], fwd_hooks=hooks)
                probs = project(tiny_vit, out["attn"][0, 0]).softmax(-1)
                loss = F.cross_entropy(probs[None], labels[i : i + 1])
                (grad,) = torch.autograd.grad(loss, leaf["A"])
            slow[b, i] = -grad[0, :, 0, 1:].sum(0)
    torch.testing.assert_close(fast, slow)


def test_importance_finds_the_patch_of_the_true_class_and_removal_curves():
    model = patch_class_vit()
    images = torch.rand(4, 3, 8, 8)
    labels = torch.arange(C)  # image y's label is y; patch y pushes class y
    importance = attention_gradient_importance(model, images, labels=labels, progress=False)
    assert importance.argmax(-1).tolist() == labels.tolist()
    assert (importance.gather(1, labels[:, None]) > 0).all()
    order = importance_order(importance)
    negative = perturbation_curve(model, images, labels=labels, order=order, mode="negative",
                                  progress=False)
    positive = perturbation_curve(model, images, labels=labels, order=order, mode="positive",
                                  progress=False)
    assert negative[-1].item() == 1.0  # only the true-class patch is left
    assert positive[1:].eq(0).all()  # the true-class patch is gone after the first removal


def test_importance_and_curve_input_checks(tiny_vit, tiny_images):
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"order has shape \[4, 3\], expected \[4, 4\]"):
        perturbation_curve(tiny_vit, tiny_images, labels=labels, order=torch.zeros(4, 3).long(),
                           mode="negative", progress=False)
    with pytest.raises(ValueError, match="permutation"):
        perturbation_curve(tiny_vit, tiny_images, labels=labels, order=torch.zeros(4, 4).long(),
                           mode="negative", progress=False)
    with pytest.raises(ValueError, match="'negative' or 'positive'"):
        kept_patches(torch.zeros(1, 2).long(), n_removed=0, mode="both")
    gap = build_hooked_vit(HookedViTConfig(
        n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=8, patch_size=4, image_size=8,
        n_channels=3, n_classes=3, return_type="class_logits", classification_type="gaap",
        use_wandb=False), seed=0)
    with pytest.raises(ValueError, match="needs a CLS token"):
        attention_gradient_importance(gap, tiny_images, labels=labels, progress=False)


def test_order_must_permute_every_row():
    check_order(torch.tensor([[2, 0, 1]]), n_images=1, n_patches=3)
    with pytest.raises(ValueError) as err:
        check_order(torch.tensor([[0, 1, 1]]), n_images=1, n_patches=3)
    assert str(err.value) == "every row of order must be a permutation of 0..2"
    with pytest.raises(ValueError) as err:
        check_order(torch.tensor([[0, 1, 2]]), n_images=2, n_patches=3)
    assert str(err.value) == ("order has shape [1, 3], expected [2, 3] (a permutation of the "
                              "patch indices per image)")


@pytest.mark.parametrize("curve", [torch.ones(1), torch.ones(2, 3)])
def test_auc_needs_a_curve_of_two_points_or_more(curve):
    with pytest.raises(ValueError) as err:
        perturbation_auc(curve)
    assert str(err.value) == ("curve must be a 1-D tensor with at least 2 points, got shape "
                              f"{list(curve.shape)}")
