"""Feature lens: each SAE feature's decoder direction read out in class space (docs/method.md 6).

A feature i adds `a_i * s * W_dec[i]` to the residual stream (s = the SAE's input std). Read
through the final LayerNorm with its scale held fixed (as in the RRM linearisation), that is
`centre(W_dec[i]) * ln_final.w @ W_H` up to a positive factor; the LayerNorm bias and the head bias
shift every feature alike and are left out. With `fold_ln=False` the score is the plain
`normalize(W_dec[i]) @ W_H` of the RRM paper's visualisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.errors import RRMUserError
from rrm_plugin.lens.projection import check_class_head


class FeatureClasses(NamedTuple):
    scores: Float[Tensor, "d_sae n_classes"]
    """Class score of every feature's unit decoder direction."""
    top_classes: Int[Tensor, "d_sae k"]
    top_scores: Float[Tensor, "d_sae k"]


def _check_sae(model: HookedViT, hook_name: str, sae: SAE) -> Tensor:
    w_dec = getattr(sae, "W_dec", None)
    if not isinstance(w_dec, Tensor) or w_dec.ndim != 2:
        raise TypeError(f"SAE at {hook_name!r} has no 2-D W_dec [d_sae, d_model]")
    if w_dec.shape[1] != model.cfg.d_model:
        raise RRMUserError(
            f"SAE at {hook_name!r} has W_dec of shape {list(w_dec.shape)}, expected "
            f"[d_sae, d_model={model.cfg.d_model}]"
        )
    if hook_name not in model.hook_dict:
        raise RRMUserError(f"SAE hook {hook_name!r} is not a hook point of the model "
                           "(expected e.g. 'blocks.0.hook_resid_post')")
    return w_dec


@torch.no_grad()
def feature_class_scores(
    model: HookedViT, saes: Mapping[str, SAE], *, fold_ln: bool = True
) -> dict[str, Float[Tensor, "d_sae n_classes"]]:
    """Per-feature class scores for every SAE (keyed by hook name), for circuit figures."""
    check_class_head(model)
    scores = {}
    for hook_name, sae in saes.items():
        w_dec = _check_sae(model, hook_name, sae).detach().float()
        directions = w_dec / w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if fold_ln and model.cfg.normalization_type in ("LN", "LNPre"):
            directions = directions - directions.mean(-1, keepdim=True)
            if model.cfg.normalization_type == "LN":
                directions = directions * model.ln_final.w
        scores[hook_name] = directions @ model.head.W_H
    return scores


def feature_lens(
    model: HookedViT, saes: Mapping[str, SAE], *, top_k: int = 3, fold_ln: bool = True
) -> dict[str, FeatureClasses]:
    """Top classes of every feature of every SAE."""
    n_classes = model.cfg.n_classes
    if not 1 <= top_k <= n_classes:
        raise RRMUserError(f"top_k must be in [1, {n_classes}], got {top_k}")
    result = {}
    for hook_name, scores in feature_class_scores(model, saes, fold_ln=fold_ln).items():
        top = scores.topk(top_k, dim=-1)
        result[hook_name] = FeatureClasses(scores, top.indices, top.values)
    return result
