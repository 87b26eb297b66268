"""Class-identifiability metrics on class-space projections (Vilas et al. 2023; docs/method.md 6).

All rates are percentages (0-100); identifiability scores are in [0, 1]. "Image tokens" are the
patch tokens (the CLS token, when there is one, is reported separately).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.stats
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rrm_plugin.errors import RRMUserError
from rrm_plugin.lens.projection import ClassProjection


def true_class_logit(
    logits: Float[Tensor, "*lead batch pos n_classes"], *, labels: Int[Tensor, " batch"]
) -> Float[Tensor, "*lead batch pos"]:
    """The projected logit of each image's true class, for every token (and layer)."""
    index = labels[:, None, None].expand(*logits.shape[:-1], 1)
    return logits.gather(-1, index).squeeze(-1)


def class_rank(
    logits: Float[Tensor, "*lead batch pos n_classes"], *, labels: Int[Tensor, " batch"]
) -> Int[Tensor, "*lead batch pos"]:
    """Position of the true class when classes are sorted by projected logit (0 = top).

    Counts the classes with a strictly larger logit, so ties resolve in favour of the true class.
    """
    true = true_class_logit(logits, labels=labels)
    return (logits > true[..., None]).sum(-1)


def identifiability_score(rank: Int[Tensor, "..."], *, n_classes: int) -> Float[Tensor, "..."]:
    """`s = 1 - rank / C`: 1 when the true class is on top, 1/C when it is last."""
    return 1.0 - rank.float() / n_classes


class BlockIdentifiability(NamedTuple):
    """Per-block summary of the residual stream's class identifiability (one entry per block)."""

    cls_score: Float[Tensor, " layer"]
    """Mean identifiability score of the CLS token (NaN for a model without CLS)."""
    image_score: Float[Tensor, " layer"]
    """Mean identifiability score over image tokens."""
    identifiability_rate: Float[Tensor, " layer"]
    """% of image tokens whose true class ranks first."""
    images_with_identifiable_token: Float[Tensor, " layer"]
    """% of images with at least one image token whose true class ranks first."""
    cls_identifiable: Float[Tensor, " layer"]
    """% of images whose CLS token ranks the true class first (NaN without CLS)."""


def block_identifiability(
    resid: Float[Tensor, "layer batch pos n_classes"],
    *,
    labels: Int[Tensor, " batch"],
    n_prefix: int,
) -> BlockIdentifiability:
    n_classes = resid.shape[-1]
    rank = class_rank(resid, labels=labels)  # [layer, batch, pos]
    score = identifiability_score(rank, n_classes=n_classes)
    top = rank[..., n_prefix:] == 0
    nan = torch.full((resid.shape[0],), float("nan"))
    return BlockIdentifiability(
        cls_score=score[..., 0].mean(-1) if n_prefix else nan,
        image_score=score[..., n_prefix:].mean((-1, -2)),
        identifiability_rate=100 * top.float().mean((-1, -2)),
        images_with_identifiable_token=100 * top.any(-1).float().mean(-1),
        cls_identifiable=100 * (rank[..., 0] == 0).float().mean(-1) if n_prefix else nan,
    )


def change_rate(
    before: Float[Tensor, "layer batch pos n_classes"],
    after: Float[Tensor, "layer batch pos n_classes"],
    *,
    labels: Int[Tensor, " batch"],
    n_prefix: int,
) -> Float[Tensor, " layer"]:
    """% of image tokens whose true-class logit is larger in `after` than in `before`."""
    rise = true_class_logit(after, labels=labels) > true_class_logit(before, labels=labels)
    return 100 * rise[..., n_prefix:].float().mean((-1, -2))


class SublayerChange(NamedTuple):
    """Class-similarity change rates: % of tokens where a sublayer's output projects onto the true
    class more strongly than the residual stream entering the block (paper Fig. 5a)."""

    attn_cls: Float[Tensor, " layer"]
    attn_image: Float[Tensor, " layer"]
    mlp_cls: Float[Tensor, " layer"]
    mlp_image: Float[Tensor, " layer"]


def sublayer_change_rates(
    projection: ClassProjection, *, labels: Int[Tensor, " batch"], n_prefix: int
) -> SublayerChange:
    prev = true_class_logit(projection.resid_prev, labels=labels)
    rates = {}
    for kind in ("attn", "mlp"):
        rise = (true_class_logit(getattr(projection, kind), labels=labels) > prev).float()
        cls = 100 * rise[..., 0].mean(-1) if n_prefix else torch.full_like(rise[:, 0, 0], torch.nan)
        rates[f"{kind}_cls"] = cls
        rates[f"{kind}_image"] = 100 * rise[..., n_prefix:].mean((-1, -2))
    return SublayerChange(**rates)


def sublayer_class_change(
    projection: ClassProjection, *, labels: Int[Tensor, " batch"], kind: str
) -> Float[Tensor, "layer batch pos"]:
    """True-class logit of a sublayer output minus that of the residual entering the block."""
    out = true_class_logit(getattr(projection, kind), labels=labels)
    return out - true_class_logit(projection.resid_prev, labels=labels)


class ResidualComposition(NamedTuple):
    """% of tokens whose top-1 class after a block equals the top-1 class of the previous
    residual, of the attention output, of the MLP output, or of none of them (paper Fig. 5b)."""

    previous: Float[Tensor, " layer"]
    attn: Float[Tensor, " layer"]
    mlp: Float[Tensor, " layer"]
    composition: Float[Tensor, " layer"]


def residual_composition(projection: ClassProjection) -> ResidualComposition:
    top = projection.resid.argmax(-1)
    prev = projection.resid_prev.argmax(-1) == top
    attn = projection.attn.argmax(-1) == top
    mlp = projection.mlp.argmax(-1) == top
    neither = ~(prev | attn | mlp)

    def pct(mask: Tensor) -> Tensor:
        return 100 * mask.float().mean((-1, -2))

    return ResidualComposition(pct(prev), pct(attn), pct(mlp), pct(neither))


class PermutationTest(NamedTuple):
    """Permutation test of `difference = mean(in group) - mean(out of group)`."""

    in_mean: float
    out_mean: float
    difference: float
    p_value: float
    """One-sided, in > out (the paper's test): `(1 + #{permuted >= observed}) / (1 + n_perm)`,
    or `#{split >= observed} / #splits` when `n_permutations` covers every split (exact test)."""
    p_value_lower: float
    """The other tail, in < out, the same way with `<=`."""
    n_permutations: int
    """Permutations asked for; an exact test uses all distinct splits instead."""


def _difference_in_means(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return x.mean(axis=axis) - y.mean(axis=axis)


def permutation_test(
    values: Float[Tensor, " n"],
    *,
    in_group: Bool[Tensor, " n"],
    n_permutations: int = 1000,
    seed: int = 0,
    chunk: int = 64,
) -> PermutationTest:
    """Permutation test of a difference in means: `scipy.stats.permutation_test`, both tails.

    Random group relabellings (`permutation_type="independent"`), `chunk` of them at a time, from
    `numpy.random.default_rng(seed)`; ties with the observed difference count as at least as
    extreme (SciPy's relative tolerance). When `n_permutations` is at least the number of distinct
    splits, SciPy runs the exact test over all of them.
    """
    values, in_group = values.flatten().double(), in_group.flatten().bool()
    if values.shape != in_group.shape:
        raise RRMUserError(f"values ({values.numel()}) and in_group ({in_group.numel()}) "
                           "must have the same number of elements")
    n_in = int(in_group.sum())
    n_out = values.numel() - n_in
    if n_in == 0 or n_out == 0:
        raise RRMUserError(f"both groups need members, got {n_in} in and {n_out} out of the group")
    if n_permutations < 1:
        raise RRMUserError(f"n_permutations must be >= 1, got {n_permutations}")
    x = values[in_group].cpu().numpy()
    y = values[~in_group].cpu().numpy()

    def tail(alternative: str):  # SciPy's PermutationTestResult
        return scipy.stats.permutation_test(
            (x, y), _difference_in_means, permutation_type="independent", vectorized=True,
            n_resamples=n_permutations, batch=chunk, alternative=alternative,
            random_state=np.random.default_rng(seed),
        )

    upper, lower = tail("greater"), tail("less")
    return PermutationTest(
        in_mean=float(x.mean()),
        out_mean=float(y.mean()),
        difference=float(upper.statistic),
        p_value=float(upper.pvalue),
        p_value_lower=float(lower.pvalue),
        n_permutations=n_permutations,
    )


def check_object_mask(mask: Tensor, *, n_images: int, n_patches: int) -> Bool[Tensor, "b p"]:
    if not isinstance(mask, Tensor):
        raise TypeError(f"object_mask must be a bool tensor [{n_images}, {n_patches}], "
                        f"got {type(mask).__name__}")
    if tuple(mask.shape) != (n_images, n_patches):
        raise RRMUserError(
            f"object_mask has shape {list(mask.shape)}, expected [{n_images}, {n_patches}] "
            "(one row per image, one column per patch in row-major order, CLS excluded)"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"object_mask must have dtype torch.bool, got {mask.dtype}")
    return mask


def context_vs_object(
    values: Float[Tensor, "layer batch n_patches"],
    *,
    object_mask: Bool[Tensor, "batch n_patches"],
    n_permutations: int = 1000,
    seed: int = 0,
) -> list[PermutationTest]:
    """Per block: mean over object tokens minus mean over context tokens, permutation test."""
    check_object_mask(object_mask, n_images=values.shape[1], n_patches=values.shape[2])
    return [
        permutation_test(v, in_group=object_mask, n_permutations=n_permutations, seed=seed + i)
        for i, v in enumerate(values)
    ]
