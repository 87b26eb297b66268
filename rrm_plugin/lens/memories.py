"""Attention and MLP layers as key-value memories in class space (Vilas et al. 2023, Sec. 5).

A sublayer's output is `sum_i k_i v_i`: for an MLP, keys are the hidden activations and values the
rows of `W_out`; for attention, keys are the attention-weighted value vectors of all heads
(`hook_z`, heads concatenated) and values the rows of `W_O` (flattened over heads). Projecting
values onto the class embeddings `E = W_H^T` tells which classes each memory promotes.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.prisma import check_images
from rrm_plugin.lens.projection import check_class_head, check_labels, project, sublayer_norm
from rrm_plugin.runs.sharded import map_batches

Sublayer = Literal["attn", "mlp"]
SUBLAYERS: tuple[Sublayer, ...] = ("attn", "mlp")


def value_vectors(model: HookedViT, *, layer: int, kind: Sublayer) -> Float[Tensor, "n_values d"]:
    """The memory values of a sublayer: `W_out` rows (MLP) or `W_O` rows, heads flattened."""
    block = model.blocks[layer]
    if kind == "mlp":
        return block.mlp.W_out
    if kind == "attn":
        return rearrange(block.attn.W_O, "head d_head d_model -> (head d_head) d_model")
    raise RRMUserError(f"kind must be 'attn' or 'mlp', got {kind!r}")


def value_class_projection(
    model: HookedViT, *, layer: int, kind: Sublayer, normalize: bool
) -> Float[Tensor, "n_classes n_values"]:
    """`P = E V^T`; with `normalize`, rows of E and V are unit vectors (cosine similarities)."""
    classes = model.head.W_H.T  # [n_classes, d_model]
    values = value_vectors(model, layer=layer, kind=kind)
    if normalize:
        classes = classes / classes.norm(dim=-1, keepdim=True)
        values = values / values.norm(dim=-1, keepdim=True)
    return einsum(classes, values, "c d, v d -> c v")


class ClassValueAgreement(NamedTuple):
    """Per block: mean over classes of the best cosine between a class embedding and any value."""

    trained: Float[Tensor, " layer"]
    control: Float[Tensor, " layer"]
    """Same statistic in the randomly initialised control model."""
    p_value: Float[Tensor, " layer"]
    """One-sided Wilcoxon signed-rank test over classes (trained > control)."""
    per_class: Float[Tensor, "layer n_classes"]


@torch.no_grad()
def class_value_agreement(
    model: HookedViT, control: HookedViT, *, kind: Sublayer
) -> ClassValueAgreement:
    from scipy.stats import wilcoxon

    check_class_head(model)
    check_class_head(control)
    if (model.cfg.n_layers, model.cfg.n_classes) != (control.cfg.n_layers, control.cfg.n_classes):
        raise RRMUserError("control model must have the same number of layers and classes as model")
    layers = range(model.cfg.n_layers)
    best = torch.stack([
        value_class_projection(model, layer=b, kind=kind, normalize=True).amax(-1) for b in layers
    ])
    best_control = torch.stack([
        value_class_projection(control, layer=b, kind=kind, normalize=True).amax(-1)
        for b in layers
    ])
    p = [wilcoxon(t.numpy(), c.numpy(), alternative="greater").pvalue
         for t, c in zip(best, best_control, strict=True)]
    return ClassValueAgreement(
        trained=best.mean(-1), control=best_control.mean(-1), p_value=torch.tensor(p),
        per_class=best,
    )


def memory_hook_names(model: HookedViT) -> list[str]:
    names = []
    for layer in range(model.cfg.n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.mlp.hook_post",
                  f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
    return names


def top_keys(cache, *, layer: int, kind: Sublayer, k: int) -> Int[Tensor, "batch pos k"]:
    """Indices of the k most activated memories of every token.

    MLP keys are the post-activation hidden units, i.e. the coefficients that weight `W_out` rows
    (the authors take `fc1` before GELU; the top-k agree whenever those k are positive).
    """
    if kind == "mlp":
        keys = cache[f"blocks.{layer}.mlp.hook_post"]
    else:
        keys = rearrange(cache[f"blocks.{layer}.attn.hook_z"], "b pos head dh -> b pos (head dh)")
    return keys.topk(k, dim=-1).indices


class MemoryAgreement(NamedTuple):
    """Per block, for one sublayer kind (rates in %, averaged over images)."""

    key_value_all: Float[Tensor, " layer"]
    """% of tokens with one of their top-k keys among the top-k values of the true class."""
    key_value_cls: Float[Tensor, " layer"]
    """Same for the CLS token only (NaN without CLS)."""
    key_value_control: Float[Tensor, " layer"]
    """All tokens, against the top-k values of a random other class."""
    compositionality: Float[Tensor, " layer"]
    """% of tokens whose sublayer top-1 class is the top class of one of their top-k memories."""


def _agreement(
    token_keys: Int[Tensor, "batch pos k"], class_values: Int[Tensor, "batch k"]
) -> Tensor:
    """Whether any of a token's top keys is among the chosen class's top values."""
    hits = token_keys[..., :, None] == class_values[:, None, None, :]
    return hits.any(-1).any(-1)


@torch.no_grad()
def memory_agreement(
    model: HookedViT,
    images: Float[Tensor, "batch channels height width"],
    *,
    labels: Int[Tensor, " batch"],
    kind: Sublayer,
    k: int = 5,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> MemoryAgreement:
    """Key-value agreement and compositionality of one sublayer kind in every block."""
    check_class_head(model)
    check_images(model, images)
    n_classes, n_layers = model.cfg.n_classes, model.cfg.n_layers
    labels = check_labels(labels, n_classes=n_classes, n_images=len(images))
    n_values = value_vectors(model, layer=0, kind=kind).shape[0]
    if not 1 <= k <= n_values:
        raise RRMUserError(f"k must be in [1, {n_values}] (number of {kind} values), got {k}")
    raw = torch.stack([value_class_projection(model, layer=b, kind=kind, normalize=False)
                       for b in range(n_layers)])  # [layer, class, value]
    class_top_values = raw.topk(k, dim=-1).indices  # [layer, class, k]
    value_top_class = raw.argmax(1)  # [layer, value]
    generator = torch.Generator().manual_seed(seed)
    # A random class other than the true one, per image (the control of the agreement rate).
    other = (labels + torch.randint(1, n_classes, labels.shape, generator=generator)) % n_classes
    has_cls = model.cfg.classification_type == "cls"

    names = memory_hook_names(model)

    def batch(sl: slice) -> dict[str, Tensor]:
        sums = torch.zeros(4, n_layers)
        _, cache = model.run_with_cache(images[sl], names_filter=names)
        for b in range(n_layers):
            keys = top_keys(cache, layer=b, kind=kind, k=k)  # [batch, pos, k]
            agree = _agreement(keys, class_top_values[b, labels[sl]]).float()  # [batch, pos]
            control = _agreement(keys, class_top_values[b, other[sl]]).float()
            hidden = sublayer_norm(model, cache[f"blocks.{b}.hook_{kind}_out"], layer=b, kind=kind)
            out = project(model, hidden).argmax(-1)
            composed = (value_top_class[b][keys] == out[..., None]).any(-1).float()
            sums[0, b] += agree.mean(-1).sum()
            sums[1, b] += agree[:, 0].sum() if has_cls else torch.nan
            sums[2, b] += control.mean(-1).sum()
            sums[3, b] += composed.mean(-1).sum()
        return {"sums": sums}

    parts = map_batches(batch, n=len(images), batch_size=batch_size, name=f"{kind} memories",
                        progress=progress)
    sums = torch.zeros(4, n_layers)
    for part in parts:  # in batch order, whichever process computed each batch
        sums += part["sums"]
    rates = 100 * sums / len(images)
    return MemoryAgreement(*rates)
