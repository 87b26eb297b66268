"""Image-part importance from attention gradients, evaluated by progressive patch removal.

Importance (Vilas et al. 2023, Sec. 6): every block b gets a class loss on its attention output at
the CLS token, `L_b = CE(softmax(W_H^T LN_final(attn_out_b[CLS]) + b_H), y)`; the importance of
patch k is `-sum_b sum_heads dL_b / dA_b[head, CLS, k]` (A_b = attention pattern of block b).
A patch whose attention weight lowers the class loss is important.

Comparison ranking (the authors' own): Chefer et al.'s gradient-weighted attention rollout
(`chefer_rollout_importance`).

Removal: patches are dropped from the token sequence after the position embedding (as the
authors do), so the model sees fewer tokens rather than blanked pixels. Negative perturbation
drops the least important patches first (a good ranking keeps accuracy: higher AUC is better);
positive perturbation drops the most important first (lower AUC is better).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.prisma import check_images
from rrm_plugin.lens.projection import (
    check_class_head,
    check_labels,
    n_patches,
    n_prefix_tokens,
    project,
)
from rrm_plugin.runs.sharded import concat, map_batches

Perturbation = Literal["negative", "positive"]
AucNormalisation = Literal["authors", "inclusive"]


def attention_gradient_importance(
    model: HookedViT,
    images: Float[Tensor, "batch channels height width"],
    *,
    labels: Int[Tensor, " batch"],
    softmax_before_ce: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> Float[Tensor, "batch n_patches"]:
    """Importance of every patch of every image (larger = more important for the true class).

    `softmax_before_ce=True` follows the authors' code, which feeds softmax probabilities to
    `CrossEntropyLoss` (a double softmax); `False` uses the cross-entropy of the logits.
    """
    return importance_by_block(
        model, images, labels=labels, softmax_before_ce=softmax_before_ce,
        batch_size=batch_size, progress=progress,
    ).sum(0)


def importance_by_block(
    model: HookedViT,
    images: Float[Tensor, "batch channels height width"],
    *,
    labels: Int[Tensor, " batch"],
    softmax_before_ce: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> Float[Tensor, "layer batch n_patches"]:
    """Each block's term `-sum_heads dL_b / dA_b[head, CLS, k]` of the importance."""
    check_class_head(model)
    if model.cfg.classification_type != "cls":
        raise RRMUserError("attention-gradient importance needs a CLS token "
                           "(classification_type='cls'); this model pools all tokens")
    n_prefix = n_prefix_tokens(model)  # CLS, then any register tokens
    check_images(model, images)
    labels = check_labels(labels, n_classes=model.cfg.n_classes, n_images=len(images))
    n_layers = model.cfg.n_layers
    saved: dict[str, Tensor] = {}

    def save(tensor: Tensor, hook) -> Tensor:
        saved[hook.name] = tensor
        return tensor

    hooks = [(f"blocks.{b}.{name}", save)
             for b in range(n_layers) for name in ("attn.hook_pattern", "hook_attn_out")]

    def batch(sl: slice) -> dict[str, Tensor]:
        # The input requires grad so the graph exists even if the weights are frozen.
        x = images[sl].clone().requires_grad_(True)
        y = labels[sl]
        importance = torch.zeros(n_layers, len(x), n_patches(model) + n_prefix, device=x.device)
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            model(x)
            for b in range(n_layers):
                logits = project(model, saved[f"blocks.{b}.hook_attn_out"][:, 0])
                scores = logits.softmax(-1) if softmax_before_ce else logits
                loss = F.cross_entropy(scores, y, reduction="sum")  # images are independent
                pattern = saved[f"blocks.{b}.attn.hook_pattern"]
                (grad,) = torch.autograd.grad(loss, pattern, retain_graph=b < n_layers - 1)
                importance[b] = -grad[:, :, 0, :].sum(1)  # CLS query, summed over heads
        saved.clear()
        return {"importance": importance[..., n_prefix:].detach().cpu()}

    parts = map_batches(batch, n=len(images), batch_size=batch_size,
                        name="attention gradients", progress=progress)
    return concat(parts, "importance", dim=1)


def chefer_rollout_importance(
    model: HookedViT,
    images: Float[Tensor, "batch channels height width"],
    *,
    labels: Int[Tensor, " batch"],
    batch_size: int = 64,
    progress: bool = True,
) -> Float[Tensor, "batch n_patches"]:
    """Chefer et al.'s gradient-weighted attention rollout, as the authors compare against it.

    With `A_b` the attention pattern of block b and `G_b = d logit_y / d A_b` (y = true class):
    `Abar_b = mean_heads clamp(G_b * A_b, min=0)`, `R = I`, then `R <- R + Abar_b @ R` for
    b = 0 .. L-1 (no row normalisation, as in Chefer's and the authors' code). The importance of
    patch j is `R[CLS, j]`, over the patch columns only (CLS and register columns dropped).
    """
    check_class_head(model)
    if model.cfg.classification_type != "cls":
        raise RRMUserError("the attention rollout is read at the CLS token "
                           "(classification_type='cls'); this model pools all tokens")
    n_prefix = n_prefix_tokens(model)
    check_images(model, images)
    labels = check_labels(labels, n_classes=model.cfg.n_classes, n_images=len(images))
    names = [f"blocks.{b}.attn.hook_pattern" for b in range(model.cfg.n_layers)]
    saved: dict[str, Tensor] = {}

    def save(pattern: Tensor, hook) -> Tensor:
        saved[hook.name] = pattern
        return pattern


    def batch(sl: slice) -> dict[str, Tensor]:
        x = images[sl].clone().requires_grad_(True)
        y = labels[sl]
        with torch.enable_grad():
            logits = model.run_with_hooks(x, fwd_hooks=[(n, save) for n in names])
            # Summed over images: each image's logit depends only on its own patterns.
            target = logits.gather(1, y[:, None]).sum()
            patterns = [saved[n] for n in names]
            grads = torch.autograd.grad(target, patterns)
        n_tokens = patterns[0].shape[-1]
        relevance = torch.eye(n_tokens, device=x.device).expand(len(x), -1, -1)
        for pattern, grad in zip(patterns, grads, strict=True):
            weighted = (grad * pattern).detach().clamp(min=0).mean(1)  # [batch, query, key]
            relevance = relevance + weighted @ relevance
        saved.clear()
        return {"rollout": relevance[:, 0, n_prefix:].cpu()}

    parts = map_batches(batch, n=len(images), batch_size=batch_size, name="attention rollout",
                        progress=progress)
    return concat(parts, "rollout")


def importance_order(
    importance: Float[Tensor, "batch n_patches"],
) -> Int[Tensor, "batch n_patches"]:
    """Patch indices from most to least important."""
    return importance.argsort(dim=-1, descending=True, stable=True)


def random_order(
    n_images: int, n_patches: int, *, seed: int, shared: bool = False
) -> Int[Tensor, "batch n_patches"]:
    """A random patch order: independent per image, or (`shared=True`, the authors' protocol) one
    permutation `torch.randperm(n_patches)` of the seed, used for every image."""
    generator = torch.Generator().manual_seed(seed)
    if shared:
        return torch.randperm(n_patches, generator=generator).expand(n_images, -1).clone()
    return torch.rand(n_images, n_patches, generator=generator).argsort(-1)


def least_important_object_share(
    order: Int[Tensor, "batch n_patches"],
    *,
    object_mask: Bool[Tensor, "batch n_patches"],
    fraction: float = 0.25,
) -> float:
    """Share of object patches among each image's least important `fraction` of patches (the last
    ones of the order, removed first by negative perturbation), pooled over images."""
    n = order.shape[1]
    if not 0 < fraction <= 1:
        raise RRMUserError(f"fraction must be in (0, 1], got {fraction}")
    if tuple(object_mask.shape) != tuple(order.shape):
        raise RRMUserError(f"object_mask has shape {list(object_mask.shape)}, expected "
                           f"{list(order.shape)} like the order")
    n_last = max(1, round(fraction * n))
    last = order[:, n - n_last :]
    return float(object_mask.gather(1, last.to(object_mask.device)).float().mean())


def check_order(order: Tensor, *, n_images: int, n_patches: int) -> Tensor:
    if tuple(order.shape) != (n_images, n_patches):
        raise RRMUserError(
            f"order has shape {list(order.shape)}, expected [{n_images}, {n_patches}]"
            " (a permutation of the patch indices per image)")
    if not torch.equal(order.sort(-1).values, torch.arange(n_patches).expand(n_images, -1)):
        raise RRMUserError(f"every row of order must be a permutation of 0..{n_patches - 1}")
    return order


def keep_tokens_hook(keep: Int[Tensor, "batch n_keep"], *, n_prefix: int):
    """A `blocks.0.hook_resid_pre` hook keeping the prefix (CLS) tokens and the listed patches."""

    def hook(resid: Float[Tensor, "batch pos d_model"], hook) -> Tensor:
        prefix = torch.arange(n_prefix).expand(len(keep), -1)
        index = torch.cat([prefix, keep + n_prefix], dim=1)
        return resid.gather(1, index[..., None].expand(-1, -1, resid.shape[-1]))

    return hook


def kept_patches(
    order: Int[Tensor, "batch n_patches"], *, n_removed: int, mode: Perturbation
) -> Int[Tensor, "batch n_keep"]:
    """Negative perturbation removes from the end of the order, positive from the start."""
    n = order.shape[1]
    if mode == "negative":
        return order[:, : n - n_removed]
    if mode == "positive":
        return order[:, n_removed:]
    raise RRMUserError(f"mode must be 'negative' or 'positive', got {mode!r}")


@torch.no_grad()
def perturbation_curve(
    model: HookedViT,
    images: Float[Tensor, "batch channels height width"],
    *,
    labels: Int[Tensor, " batch"],
    order: Int[Tensor, "batch n_patches"],
    mode: Perturbation,
    batch_size: int = 512,
    progress: bool = True,
) -> Float[Tensor, " n_patches"]:
    """Accuracy after removing k = 0 .. n_patches-1 patches in `order` (one always stays)."""
    check_class_head(model)
    check_images(model, images)
    labels = check_labels(labels, n_classes=model.cfg.n_classes, n_images=len(images))
    n_total = n_patches(model)
    check_order(order, n_images=len(images), n_patches=n_total)
    n_prefix = n_prefix_tokens(model)

    def batch(sl: slice) -> dict[str, Tensor]:
        # Every removal count for this batch of images: correct predictions per count.
        correct = torch.zeros(n_total, dtype=torch.long)
        for n_removed in range(n_total):
            keep = kept_patches(order[sl], n_removed=n_removed, mode=mode)
            hook = keep_tokens_hook(keep, n_prefix=n_prefix)
            logits = model.run_with_hooks(images[sl], fwd_hooks=[("blocks.0.hook_resid_pre", hook)])
            correct[n_removed] = int((logits.argmax(-1) == labels[sl]).sum())
        return {"correct": correct}

    parts = map_batches(batch, n=len(images), batch_size=batch_size,
                        name=f"{mode} perturbation", progress=progress)
    return (torch.stack([p["correct"] for p in parts]).sum(0).double() / len(images)).float()


def perturbation_auc(
    curve: Float[Tensor, " n_patches"], *, normalisation: AucNormalisation = "authors"
) -> float:
    """Normalised area under a `perturbation_curve` (`curve[k]` = accuracy with k of the
    N = len(curve) patches removed, k = 0 .. N-1; `curve[0]` is the unperturbed model).

    "authors": `sum_{k>=1} acc_k / (N * max_{k>=1} acc_k)`. The authors' code records accuracy with
    n = 1 .. N-1 patches kept (k = N-n removed), so the unperturbed point is left out of both the
    sum and the maximum, while the divisor stays N (`np.sum(acc) / (np.max(acc) * 49)`, ViT-B/32).
    "inclusive": `sum_{k>=0} acc_k / (N * max_{k>=0} acc_k)`, unperturbed point included.
    """
    if curve.ndim != 1 or len(curve) < 2:
        raise RRMUserError("curve must be a 1-D tensor with at least 2 points, got shape "
                           f"{list(curve.shape)}")
    if normalisation == "authors":
        points = curve[1:]
    elif normalisation == "inclusive":
        points = curve
    else:
        raise RRMUserError(f"normalisation must be 'authors' or 'inclusive', got {normalisation!r}")
    top = float(points.max())
    if top <= 0:
        return float("nan")
    return float(points.sum()) / (len(curve) * top)
