"""Deep Feature Reweighting (Kirichenko et al. 2023, DFR^Val_Tr): retrain only the last layer on
the validation split, group-balanced, as an L1-regularised logistic regression on the model's
penultimate features (the final LayerNorm's output, pooled as the head pools it).

As in the paper: features standardised, the inverse regularisation strength C chosen on half of
the validation split by worst-group accuracy after training on the other half, then the head
refitted on all of it. The paper balances groups by subsampling; here every image is weighted by
`1 / (n_groups * group size)` (`group_weights`), which balances them without discarding images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.debias.evaluation import group_accuracy
from rrm_plugin.errors import RRMUserError

DFR_CS = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
"""The paper's grid of C (inverse L1 strength)."""


@torch.no_grad()
def penultimate_features(model: nn.Module, images: Tensor, *, batch_size: int = 256
                         ) -> Float[Tensor, "n d_model"]:
    """What the head reads: `ln_final`'s output, CLS token or mean over tokens (`cfg`)."""
    pooling = model.cfg.classification_type
    if pooling not in ("cls", "gaap"):
        raise RRMUserError(f"DFR reads the head's input; unknown classification_type {pooling!r}")
    out = []
    for start in range(0, len(images), batch_size):
        _, cache = model.run_with_cache(images[start:start + batch_size],
                                        names_filter="ln_final.hook_normalized")
        x = cache["ln_final.hook_normalized"]
        out.append((x[:, 0] if pooling == "cls" else x.mean(1)).double().cpu())
    return torch.cat(out)


def group_weights(groups: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
    """`1 / (n_groups * size of the image's group)`: every group weighs the same, total 1."""
    _, inverse, sizes = torch.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (len(sizes) * sizes[inverse].double())


class DFRHead(NamedTuple):
    """A refitted last layer: standardisation, then a linear map to the classes."""

    mean: Float[Tensor, " d"]
    std: Float[Tensor, " d"]
    weight: Float[Tensor, "classes d"]
    bias: Float[Tensor, " classes"]
    c: float
    """The chosen C."""
    validation: dict[float, float]
    """Worst-group accuracy on the held-out half of the validation split, per C."""

    def logits(self, features: Float[Tensor, "n d"]) -> Float[Tensor, "n classes"]:
        return ((features.double() - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, model: nn.Module, images: Tensor, *, batch_size: int = 256
                ) -> Int[Tensor, " n"]:
        return self.logits(penultimate_features(model, images, batch_size=batch_size)).argmax(-1)


def fit_head(features: Float[Tensor, "n d"], labels: Int[Tensor, " n"],
             groups: Int[Tensor, " n"], *, c: float, n_classes: int) -> DFRHead:
    """Group-balanced L1 logistic regression on standardised features (one C)."""
    if len(labels.unique()) < 2:
        raise RRMUserError("DFR needs at least two classes in the validation split")
    mean, std = features.mean(0), features.std(0).clamp_min(1e-8)
    x = ((features - mean) / std).numpy()
    weights = group_weights(groups).numpy()
    # The paper's liblinear is binary-only in current scikit-learn; saga fits the multinomial L1
    # problem. sample_weight scales each image's loss, so it is rescaled to mean 1 to keep C's
    # meaning (the paper's balanced subsample has weight 1 per image).
    fit = LogisticRegression(l1_ratio=1.0, C=c, solver="saga", max_iter=5000, tol=1e-4,
                             random_state=0)
    fit.fit(x, labels.numpy(), sample_weight=weights * len(weights))
    weight = torch.zeros(n_classes, features.shape[1], dtype=torch.float64)
    bias = torch.full((n_classes,), -np.inf, dtype=torch.float64)  # classes never seen: never
    classes = torch.as_tensor(fit.classes_)
    if len(classes) == 2:  # binary: one decision function for the second class
        coef = torch.as_tensor(fit.coef_[0])
        weight[classes[1]], bias[classes[1]] = coef, float(fit.intercept_[0])
        weight[classes[0]], bias[classes[0]] = 0.0, 0.0
    else:
        weight[classes] = torch.as_tensor(fit.coef_)
        bias[classes] = torch.as_tensor(fit.intercept_)
    return DFRHead(mean, std, weight, bias, c, {})


def fit_dfr(model: nn.Module, validation: SpuriousSplit, *, cs: Sequence[float] = DFR_CS,
            seed: int = 0, batch_size: int = 256) -> DFRHead:
    """DFR^Val_Tr on `validation` (module doc): C by worst-group accuracy on a held-out half
    (a seeded random half of the images), then the head refitted on all of it."""
    if not cs or any(c <= 0 for c in cs):
        raise RRMUserError(f"DFR's C values must be positive, got {list(cs)}")
    features = penultimate_features(model, validation.images, batch_size=batch_size)
    labels, groups = validation.labels.cpu(), validation.groups.cpu()
    n_classes = model.cfg.n_classes
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train, held = order[: len(order) // 2], order[len(order) // 2:]
    scores = {}
    for c in cs:
        head = fit_head(features[train], labels[train], groups[train], c=c, n_classes=n_classes)
        correct = (head.logits(features[held]).argmax(-1) == labels[held]).float()
        scores[float(c)] = group_accuracy(correct, groups[held]).worst_group
    best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    return fit_head(features, labels, groups, c=best, n_classes=n_classes)._replace(
        validation=scores)
