"""Projection of hidden states onto the class embedding space (Vilas et al. 2023; docs/method.md 6).

Every residual-stream vector `h` (block outputs, attention outputs, MLP outputs, any token) is read
out with the model's own final LayerNorm and class head: `p = W_H^T LN_final(h) + b_H`. As in the
authors' code, `LN_final` normalises `h` with its own statistics (unlike TransformerLens's
`apply_ln_to_stack`, which reuses the final residual's cached scale to *decompose* the logits).
For mean-pooled (`classification_type="gaap"`) models the authors first pass attention and MLP
outputs through the block's own LayerNorm (`ln1`, `ln2`); `sublayer_norm` does the same.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.prisma import check_images
from rrm_plugin.hosts.vit import n_prefix_tokens as prefix
from rrm_plugin.runs.sharded import concat, map_batches


class ClassProjection(NamedTuple):
    """Class-space projections of one batch of images (logits, bias included)."""

    embed: Float[Tensor, "batch pos n_classes"]
    """Input of block 0 (patch + position embeddings): the 'previous block' of block 0."""
    resid: Float[Tensor, "layer batch pos n_classes"]
    """Residual stream after every block (`blocks.{l}.hook_resid_post`)."""
    attn: Float[Tensor, "layer batch pos n_classes"]
    """Attention output of every block (`blocks.{l}.hook_attn_out`)."""
    mlp: Float[Tensor, "layer batch pos n_classes"]
    """MLP output of every block (`blocks.{l}.hook_mlp_out`)."""

    @property
    def resid_prev(self) -> Float[Tensor, "layer batch pos n_classes"]:
        """Residual stream entering every block: embeddings, then outputs of blocks 0..L-2."""
        return torch.cat([self.embed[None], self.resid[:-1]], dim=0)


def check_class_head(model: HookedViT) -> None:
    """Reject models the lens cannot read: not a HookedViT, no class head, no MLPs."""
    if not isinstance(model, HookedViT):
        raise TypeError(f"model must be a vit_prisma HookedViT, got {type(model).__name__}")
    cfg = model.cfg
    if cfg.return_type != "class_logits":
        raise RRMUserError(
            f"model has return_type={cfg.return_type!r}; the class-embedding lens needs a class "
            "head (return_type='class_logits', head.W_H [d_model, n_classes])"
        )
    w_h = model.head.W_H
    if tuple(w_h.shape) != (cfg.d_model, cfg.n_classes) or cfg.n_classes < 2:
        raise RRMUserError(
            f"class head W_H has shape {list(w_h.shape)}, expected [d_model={cfg.d_model}, "
            f"n_classes={cfg.n_classes}] with at least 2 classes"
        )
    if cfg.classification_type not in ("cls", "gaap"):
        raise RRMUserError(
            f"classification_type {cfg.classification_type!r} is not supported; "
            "expected 'cls' (CLS token) or 'gaap' (mean-pooled tokens)"
        )
    if cfg.attn_only or cfg.use_bert_block:
        raise RRMUserError("the lens needs pre-LN blocks with attention and MLP (got attn_only or "
                           "use_bert_block=True)")


def n_prefix_tokens(model: HookedViT) -> int:
    """Tokens before the image patches: CLS (if any) and register tokens."""
    return prefix(model)


def n_patches(model: HookedViT) -> int:
    """Number of image patches (tokens after the prefix)."""
    return (model.cfg.image_size // model.cfg.patch_size) ** 2


def check_labels(labels: Tensor, *, n_classes: int, n_images: int) -> Tensor:
    """Integer labels, one per image, each in [0, n_classes)."""
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"labels must be an integer tensor of shape [{n_images}], got {kind}")
    if tuple(labels.shape) != (n_images,):
        raise RRMUserError(f"labels have shape {list(labels.shape)}, expected [{n_images}] "
                           "(one label per image)")
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise RRMUserError(
            f"label {int(labels[bad][0])} out of range: the model has {n_classes} classes "
            f"(labels must be in [0, {n_classes - 1}])"
        )
    return labels.long()


def project(
    model: HookedViT, hidden: Float[Tensor, "*stack d_model"]
) -> Float[Tensor, "*stack n_classes"]:
    """`W_H^T LN_final(h) + b_H` for every vector of a stack (one einsum)."""
    normed = model.ln_final(hidden)
    return einsum(normed, model.head.W_H, "... d_model, d_model c -> ... c") + model.head.b_H


def sublayer_norm(
    model: HookedViT, hidden: Float[Tensor, "*stack d_model"], *, layer: int, kind: str
) -> Float[Tensor, "*stack d_model"]:
    """What the lens projects for a `kind` ("resid", "attn", "mlp") output of block `layer`.

    Mean-pooled models: attention outputs through `blocks[layer].ln1`, MLP outputs through
    `blocks[layer].ln2` (the authors' extractor, for their GAP ViT); otherwise unchanged.
    """
    if kind not in ("resid", "attn", "mlp"):
        raise RRMUserError(f"kind must be 'resid', 'attn' or 'mlp', got {kind!r}")
    if model.cfg.classification_type != "gaap" or kind == "resid":
        return hidden
    block = model.blocks[layer]
    return block.ln1(hidden) if kind == "attn" else block.ln2(hidden)


def lens_hook_names(model: HookedViT) -> list[str]:
    hooks = ("hook_resid_post", "hook_attn_out", "hook_mlp_out")
    return ["blocks.0.hook_resid_pre"] + [
        f"blocks.{layer}.{h}" for layer in range(model.cfg.n_layers) for h in hooks
    ]


def project_cache(model: HookedViT, cache) -> ClassProjection:
    """Project embeddings, block, attention and MLP outputs from a host `ActivationCache`."""
    n_layers = model.cfg.n_layers
    sublayers = [
        torch.stack([sublayer_norm(model, cache[f"blocks.{b}.hook_{kind}_out"], layer=b, kind=kind)
                     for b in range(n_layers)])
        for kind in ("attn", "mlp")
    ]
    stack = torch.cat(
        [cache["blocks.0.hook_resid_pre"][None], cache.stack_activation("resid_post"), *sublayers]
    )  # [1 + 3L, batch, pos, d_model]
    logits = project(model, stack)
    resid, attn, mlp = logits[1:].split(n_layers)
    return ClassProjection(embed=logits[0], resid=resid, attn=attn, mlp=mlp)


@torch.no_grad()
def project_images(
    model: HookedViT,
    images: Float[Tensor, "batch channels height width"],
    *,
    batch_size: int = 128,
    progress: bool = True,
) -> ClassProjection:
    """Run the model in batches and project every block, sublayer and token."""
    check_class_head(model)
    check_images(model, images)
    names = lens_hook_names(model)

    def batch(sl: slice) -> dict[str, Tensor]:
        _, cache = model.run_with_cache(images[sl], names_filter=names)
        return project_cache(model, cache)._asdict()

    parts = map_batches(batch, n=len(images), batch_size=batch_size, name="class projection",
                        progress=progress)
    return ClassProjection(embed=concat(parts, "embed"), resid=concat(parts, "resid", dim=1),
                           attn=concat(parts, "attn", dim=1), mlp=concat(parts, "mlp", dim=1))
