"""Linear-probe baseline (Vilas et al. 2023, Sec. 7): one ridge probe per layer, sublayer and token.

As the authors: sklearn-style `Ridge(alpha)` with intercept on the raw hidden states, targets +1 for
the true class and -1 otherwise, trained on images separate from the test images. All probes are
fitted at once in closed form from streamed moments (`X^T X`, `X^T Y`), batched over probes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.prisma import check_images
from rrm_plugin.lens.metrics import class_rank
from rrm_plugin.lens.projection import check_class_head, check_labels, project, sublayer_norm
from rrm_plugin.runs.sharded import map_batches

KINDS = ("resid", "attn", "mlp")
_HOOKS = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}


class RidgeProbes(NamedTuple):
    weight: Float[Tensor, "probe d_model n_classes"]
    bias: Float[Tensor, "probe n_classes"]


class _Moments(NamedTuple):
    n: int
    sum_x: Float[Tensor, "probe d"]
    sum_xx: Float[Tensor, "probe d d"]
    sum_xy: Float[Tensor, "probe d c"]
    sum_y: Float[Tensor, " c"]


def _targets(labels: Int[Tensor, " n"], n_classes: int) -> Float[Tensor, "n c"]:
    return 2.0 * F.one_hot(labels, n_classes).double() - 1.0


def _moments(features: Float[Tensor, "probe n d"], targets: Float[Tensor, "n c"]) -> _Moments:
    x = features.double()
    return _Moments(
        n=x.shape[1],
        sum_x=x.sum(1),
        sum_xx=einsum(x, x, "p n d, p n e -> p d e"),
        sum_xy=einsum(x, targets, "p n d, n c -> p d c"),
        sum_y=targets.sum(0),
    )


def _add(a: _Moments | None, b: _Moments) -> _Moments:
    if a is None:
        return b
    return _Moments(*(x + y for x, y in zip(a, b, strict=True)))


def _solve(m: _Moments, *, alpha: float) -> RidgeProbes:
    """Ridge, intercept unpenalised: centre X and Y, solve `(Xc^T Xc + alpha I) W = Xc^T Yc`."""
    mean_x, mean_y = m.sum_x / m.n, m.sum_y / m.n
    gram = m.sum_xx - m.n * einsum(mean_x, mean_x, "p d, p e -> p d e")
    cross = m.sum_xy - m.n * einsum(mean_x, mean_y, "p d, c -> p d c")
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    weight = torch.linalg.solve(gram + alpha * eye, cross)
    bias = mean_y - einsum(mean_x, weight, "p d, p d c -> p c")
    return RidgeProbes(weight.float(), bias.float())


def fit_ridge_probes(
    features: Float[Tensor, "probe n d_model"],
    *,
    labels: Int[Tensor, " n"],
    n_classes: int,
    alpha: float = 1.0,
) -> RidgeProbes:
    """Fit one ridge probe per leading index (same labels for all)."""
    if features.ndim != 3 or features.shape[1] != len(labels):
        raise RRMUserError(
            f"features must be [probe, n={len(labels)}, d], got {list(features.shape)}"
        )
    labels = check_labels(labels, n_classes=n_classes, n_images=len(labels))
    return _solve(_moments(features, _targets(labels, n_classes)), alpha=alpha)


def probe_logits(
    probes: RidgeProbes, features: Float[Tensor, "probe n d_model"]
) -> Float[Tensor, "probe n n_classes"]:
    return einsum(features, probes.weight, "p n d, p d c -> p n c") + probes.bias[:, None]


def hidden_hook_names(model: HookedViT) -> list[str]:
    return [f"blocks.{b}.{_HOOKS[k]}" for k in KINDS for b in range(model.cfg.n_layers)]


def stacked_hidden(model: HookedViT, cache) -> Float[Tensor, "kind layer batch pos d_model"]:
    return torch.stack([cache.stack_activation(_HOOKS[k].removeprefix("hook_")) for k in KINDS])


class ProbeComparison(NamedTuple):
    """Top-1 accuracy (%) on the test images, for every sublayer kind, block and token."""

    probe_accuracy: Float[Tensor, "kind layer pos"]
    projection_accuracy: Float[Tensor, "kind layer pos"]
    """The class-embedding projection read out at the same place (no training)."""
    resid_rank: Int[Tensor, "layer batch pos"]
    """Rank of the true class under the residual-stream probes (0 = top), per test image."""
    kinds: tuple[str, ...] = KINDS


@torch.no_grad()
def compare_with_probes(
    model: HookedViT,
    *,
    train_images: Float[Tensor, "n channels height width"],
    train_labels: Int[Tensor, " n"],
    test_images: Float[Tensor, "m channels height width"],
    test_labels: Int[Tensor, " m"],
    alpha: float = 1.0,
    batch_size: int = 256,
    progress: bool = True,
) -> ProbeComparison:
    """Train per-(kind, block, token) ridge probes, then score them and the projection on test."""
    check_class_head(model)
    n_classes = model.cfg.n_classes
    for images, labels in ((train_images, train_labels), (test_images, test_labels)):
        check_images(model, images)
        check_labels(labels, n_classes=n_classes, n_images=len(images))
    names = hidden_hook_names(model)


    def train_batch(sl: slice) -> dict[str, Tensor]:
        _, cache = model.run_with_cache(train_images[sl], names_filter=names)
        hidden = rearrange(stacked_hidden(model, cache), "k l n t d -> (k l t) n d")
        moments = _moments(hidden, _targets(train_labels[sl], n_classes))
        return {**moments._asdict(), "n": torch.tensor(moments.n)}

    parts = map_batches(train_batch, n=len(train_images), batch_size=batch_size,
                        name="probe training", progress=progress)
    moments = None
    for part in parts:  # summed in batch order, whichever process computed each batch
        moments = _add(moments, _Moments(**{**part, "n": int(part["n"])}))
    probes = _solve(moments, alpha=alpha)

    def test_batch(sl: slice) -> dict[str, Tensor]:
        _, cache = model.run_with_cache(test_images[sl], names_filter=names)
        hidden = stacked_hidden(model, cache)  # [kind, layer, batch, pos, d]
        shape = dict(zip("klnt", hidden.shape[:4], strict=True))
        flat = rearrange(hidden, "k l n t d -> (k l t) n d")
        logits = rearrange(probe_logits(probes, flat), "(k l t) n c -> k l n t c", **shape)
        y = test_labels[sl]
        normed = hidden if model.cfg.classification_type != "gaap" else torch.stack([
            torch.stack([sublayer_norm(model, h, layer=b, kind=k) for b, h in enumerate(layers)])
            for k, layers in zip(KINDS, hidden, strict=True)
        ])  # the projection reads what the lens reads (block norms for mean-pooled models)
        return {"probe_correct": (logits.argmax(-1) == y[:, None]).sum(2),
                "proj_correct": (project(model, normed).argmax(-1) == y[:, None]).sum(2),
                "ranks": class_rank(logits[0], labels=y)}

    parts = map_batches(test_batch, n=len(test_images), batch_size=batch_size,
                        name="probe testing", progress=progress)
    probe_correct = torch.stack([p["probe_correct"] for p in parts]).sum(0)
    proj_correct = torch.stack([p["proj_correct"] for p in parts]).sum(0)
    ranks = [p["ranks"] for p in parts]
    n_test = len(test_images)
    return ProbeComparison(
        probe_accuracy=100 * probe_correct.float() / n_test,
        projection_accuracy=100 * proj_correct.float() / n_test,
        resid_rank=torch.cat(ranks, dim=1),
    )


def probe_importance(resid_rank: Int[Tensor, "layer batch pos"], *, n_prefix: int):
    """The authors' probe ranking of patches: true-class rank summed over blocks, negated so that
    larger = more important (a patch whose probes rank the true class high comes first)."""
    return -resid_rank[..., n_prefix:].sum(0).float()
