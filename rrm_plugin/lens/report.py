"""Run every class-embedding-space analysis on one model and write JSON, tensors and PNG plots."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from torch import Tensor
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.prisma import check_images
from rrm_plugin.lens import importance as imp
from rrm_plugin.lens.features import feature_lens
from rrm_plugin.lens.memories import SUBLAYERS, class_value_agreement, memory_agreement
from rrm_plugin.lens.metrics import (
    block_identifiability,
    change_rate,
    check_object_mask,
    class_rank,
    context_vs_object,
    identifiability_score,
    residual_composition,
    sublayer_change_rates,
    sublayer_class_change,
)
from rrm_plugin.lens.probes import compare_with_probes, probe_importance
from rrm_plugin.lens.projection import (
    check_class_head,
    check_labels,
    n_patches,
    n_prefix_tokens,
    project_images,
)
from rrm_plugin.runs.sharded import map_batches

# Vilas et al. (NeurIPS 2023), as summarised in docs/method.md section 6.
PAPER = {
    "identifiability_rate_last_block": "60.7% (ViT-B/32) to 90.4% (ViT-B/16 CIFAR-100)",
    "perturbation_auc_vit_b32": {
        "ours_negative": 0.836, "ours_positive": 0.413, "random": 0.716,
        "linear_probe_negative": 0.739, "linear_probe_positive": 0.683,
    },
}


@dataclass(frozen=True)
class LensConfig:
    """Settings of `run_lens`.

    Args:
        batch_size: Images per forward pass.
        n_permutations: Permutations of the context-vs-object test.
        memory_top_k: k of the top-k keys and values (paper: 5).
        random_repeats: Random per-image orders averaged into the `random_per_image` baseline.
        random_shared_seeds: Seeds of the `random_shared` baseline (the authors' protocol: one
            random permutation shared by all images per seed, curves averaged over 10 seeds).
        probe_alpha: Ridge penalty of the linear probes (paper: 1.0).
        softmax_before_ce: Importance loss as in the authors' code (softmax, then cross-entropy).
        map_blocks: Blocks shown in the per-token maps (None: every block).
        n_example_images: Images shown in the per-token maps.
        feature_top_k: Classes listed per SAE feature.
        seed: Seed of permutations, random orders and control classes.
        progress: Show tqdm progress bars.
    """

    batch_size: int = 128
    n_permutations: int = 1000
    memory_top_k: int = 5
    random_repeats: int = 3
    random_shared_seeds: int = 10
    probe_alpha: float = 1.0
    softmax_before_ce: bool = True
    map_blocks: tuple[int, ...] | None = None
    n_example_images: int = 6
    feature_top_k: int = 3
    seed: int = 0
    progress: bool = True


class LensResults(NamedTuple):
    summary: dict[str, Any]
    """Every number, JSON-ready."""
    token_scores: Float[Tensor, "layer batch n_patches"]
    """Identifiability score of every patch token after every block."""
    importance: Float[Tensor, "batch n_patches"]
    curves: dict[str, Float[Tensor, " n_patches"]]
    feature_scores: dict[str, Float[Tensor, "d_sae n_classes"]]


def _floats(x: Tensor | float) -> Any:
    """Tensor -> (nested) list of floats with NaN as None, so the JSON is valid."""
    values = x.tolist() if isinstance(x, Tensor) else x
    if isinstance(values, list):
        return [_floats(v) for v in values]
    return None if isinstance(values, float) and math.isnan(values) else values


def _tuple_dict(t: NamedTuple) -> dict[str, Any]:
    return {k: _floats(v) for k, v in t._asdict().items() if isinstance(v, Tensor)}


@torch.no_grad()
def model_accuracy(model: HookedViT, images: Tensor, labels: Tensor, *, batch_size: int) -> float:
    def batch(sl: slice) -> dict[str, Tensor]:
        return {"correct": (model(images[sl]).argmax(-1) == labels[sl]).sum()}

    parts = map_batches(batch, n=len(images), batch_size=batch_size, name="accuracy",
                        progress=False)
    correct = sum(int(p["correct"]) for p in parts)
    return correct / len(images)


def _class_building(proj, *, labels, n_prefix, object_mask, config) -> dict[str, Any]:
    """Part 2: identifiability, change rates, composition, context vs object."""
    out: dict[str, Any] = {
        "identifiability": _tuple_dict(
            block_identifiability(proj.resid, labels=labels, n_prefix=n_prefix)),
        "change_rate": _floats(
            change_rate(proj.resid_prev, proj.resid, labels=labels, n_prefix=n_prefix)),
        "sublayer_change_rate": _tuple_dict(
            sublayer_change_rates(proj, labels=labels, n_prefix=n_prefix)),
        "residual_composition": _tuple_dict(residual_composition(proj)),
    }
    if object_mask is not None:
        n_classes = proj.resid.shape[-1]
        rank = class_rank(proj.resid, labels=labels)[..., n_prefix:]
        tests = {"identifiability": identifiability_score(rank, n_classes=n_classes)}
        for kind in SUBLAYERS:
            change = sublayer_class_change(proj, labels=labels, kind=kind)[..., n_prefix:]
            tests[f"{kind}_class_change"] = change
        out["context_vs_object"] = {
            name: [t._asdict() for t in context_vs_object(
                values, object_mask=object_mask, n_permutations=config.n_permutations,
                seed=config.seed)]
            for name, values in tests.items()
        }
        out["object_fraction"] = float(object_mask.float().mean())
    return out


def _memories(model, images, *, labels, control, config) -> dict[str, Any]:
    """Part 3: class-value agreement, key-value agreement, compositionality."""
    memories: dict[str, Any] = {}
    for kind in SUBLAYERS:
        entry = _tuple_dict(memory_agreement(
            model, images, labels=labels, kind=kind, k=config.memory_top_k,
            batch_size=config.batch_size, seed=config.seed, progress=config.progress))
        if control is not None:
            entry["class_value_agreement"] = _tuple_dict(
                class_value_agreement(model, control, kind=kind))
        memories[kind] = entry
    return memories


def _probes(comparison, *, n_prefix: int, n_train: int) -> dict[str, Any]:
    """Part 4b: probe vs projection accuracy per kind, block and token."""
    probe, lens = comparison.probe_accuracy, comparison.projection_accuracy
    out = {
        "n_train_images": n_train,
        "kinds": list(comparison.kinds),
        "probe_accuracy": _floats(probe),
        "projection_accuracy": _floats(lens),
        "probe_accuracy_image_tokens": _floats(probe[..., n_prefix:].mean(-1)),
        "projection_accuracy_image_tokens": _floats(lens[..., n_prefix:].mean(-1)),
    }
    if n_prefix:
        out["probe_accuracy_cls"] = _floats(probe[..., 0])
        out["projection_accuracy_cls"] = _floats(lens[..., 0])
    return out


def _curve_runner(model, images, *, labels, config):
    return partial(imp.perturbation_curve, model, images, labels=labels,
                   batch_size=4 * config.batch_size, progress=config.progress)


def _aucs(curves: Mapping[str, Tensor]) -> dict[str, Any]:
    """AUCs with the authors' normalisation (`auc`) and with the unperturbed point included."""
    return {
        f"auc{suffix}": {name: _floats(imp.perturbation_auc(c, normalisation=norm))
                         for name, c in curves.items()}
        for suffix, norm in (("", "authors"), ("_inclusive", "inclusive"))
    }


def _perturbation_curves(model, images, *, labels, orders, config) -> dict[str, Tensor]:
    """Part 4a: removal curves of every ranking, both directions, and of random orders."""
    curves: dict[str, Tensor] = {}
    run = _curve_runner(model, images, labels=labels, config=config)
    for name, order in orders.items():
        for mode in ("negative", "positive"):
            curves[f"{name}_{mode}"] = run(order=order, mode=mode)
    n_total = n_patches(model)

    def random_curve(*, shared: bool, n_orders: int) -> Tensor:
        # For a random order, removing from either end is the same experiment.
        return torch.stack([
            run(order=imp.random_order(len(images), n_total, seed=config.seed + r, shared=shared),
                mode="negative")
            for r in range(n_orders)
        ]).mean(0)

    curves["random_per_image"] = random_curve(shared=False, n_orders=config.random_repeats)
    curves["random_shared"] = random_curve(shared=True, n_orders=config.random_shared_seeds)
    return curves


def _importance_diagnostics(
    model, images, *, labels, by_block, orders, object_mask, config
) -> dict[str, Any]:
    """Why the importance ranks as it does: negative-perturbation curves of each block's term
    alone and of the sum without the last block; object share of the least important quarter."""
    run = _curve_runner(model, images, labels=labels, config=config)
    terms = {f"block_{b}_only": term for b, term in enumerate(by_block)}
    if len(by_block) > 1:
        terms["without_last_block"] = by_block[:-1].sum(0)
    curves = {name: run(order=imp.importance_order(term), mode="negative")
              for name, term in terms.items()}
    out: dict[str, Any] = {"mode": "negative", **_aucs(curves),
                           "curves": {name: _floats(c) for name, c in curves.items()}}
    if object_mask is not None:
        mask = object_mask.cpu()
        out["least_important_quarter"] = {
            "base_rate": float(mask.float().mean()),
            "object_share": {
                name: imp.least_important_object_share(order, object_mask=mask, fraction=0.25)
                for name, order in orders.items() if name in ("ours", "chefer")
            },
        }
    return out


def _feature_lens(model, saes, *, config) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Part 5: top classes of every SAE feature."""
    lens = feature_lens(model, saes, top_k=config.feature_top_k)
    summary = {
        name: {
            "d_sae": int(fc.scores.shape[0]),
            "top_classes": fc.top_classes.tolist(),
            "top_scores": _floats(fc.top_scores),
            "features_per_top_class": torch.bincount(
                fc.top_classes[:, 0], minlength=model.cfg.n_classes).tolist(),
        }
        for name, fc in lens.items()
    }
    return summary, {name: fc.scores for name, fc in lens.items()}


def run_lens(
    model: HookedViT,
    *,
    images: Float[Tensor, "batch channels height width"],
    labels: Int[Tensor, " batch"],
    object_mask: Bool[Tensor, "batch n_patches"] | None = None,
    probe_images: Float[Tensor, "n channels height width"] | None = None,
    probe_labels: Int[Tensor, " n"] | None = None,
    control: HookedViT | None = None,
    saes: Mapping[str, SAE] | None = None,
    config: LensConfig = LensConfig(),
) -> LensResults:
    """All analyses of the paper on one model; optional parts are skipped when their input is None.

    Args:
        images, labels: Test images and their true classes.
        object_mask: Patches covered by the object (context vs object test).
        probe_images, probe_labels: Separate images to train the linear probes on.
        control: Randomly initialised model of the same architecture (class-value agreement).
        saes: `{hook_name: SAE}` for the feature lens.
    """
    check_class_head(model)
    check_images(model, images)
    cfg = model.cfg
    labels = check_labels(labels, n_classes=cfg.n_classes, n_images=len(images))
    n_prefix, n_total = n_prefix_tokens(model), n_patches(model)
    if object_mask is not None:
        check_object_mask(object_mask, n_images=len(images), n_patches=n_total)
    if (probe_images is None) != (probe_labels is None):
        raise RRMUserError("give both probe_images and probe_labels, or neither")
    bs, progress = config.batch_size, config.progress

    summary: dict[str, Any] = {
        "model": {"name": cfg.model_name, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
                  "n_classes": cfg.n_classes, "n_patches": n_total, "n_prefix_tokens": n_prefix,
                  "classification_type": cfg.classification_type},
        "n_images": len(images),
        "accuracy": model_accuracy(model, images, labels, batch_size=bs),
        "config": asdict(config),
        "paper": PAPER,
    }
    proj = project_images(model, images, batch_size=bs, progress=progress)
    token_scores = identifiability_score(
        class_rank(proj.resid, labels=labels), n_classes=cfg.n_classes)[..., n_prefix:]
    summary.update(_class_building(proj, labels=labels, n_prefix=n_prefix,
                                   object_mask=object_mask, config=config))
    del proj
    summary["memories"] = _memories(model, images, labels=labels, control=control, config=config)

    orders: dict[str, Tensor] = {}
    importance = torch.full((len(images), n_total), float("nan"))
    by_block = None
    if cfg.classification_type == "cls":  # both importances are read at the CLS token
        by_block = imp.importance_by_block(
            model, images, labels=labels, softmax_before_ce=config.softmax_before_ce,
            batch_size=max(1, bs // 2), progress=progress)
        importance = by_block.sum(0)
        orders["ours"] = imp.importance_order(importance)
        orders["chefer"] = imp.importance_order(imp.chefer_rollout_importance(
            model, images, labels=labels, batch_size=max(1, bs // 2), progress=progress))
        if object_mask is not None:
            summary["importance"] = {
                "object_mean_by_block": _floats(by_block[:, object_mask].mean(-1)),
                "context_mean_by_block": _floats(by_block[:, ~object_mask].mean(-1)),
                "object_mean": float(importance[object_mask].mean()),
                "context_mean": float(importance[~object_mask].mean()),
            }
    if object_mask is not None:
        # Reference ranking (not in the paper): object patches first, random order within groups.
        jitter = torch.rand(object_mask.shape, generator=torch.Generator().manual_seed(config.seed))
        orders["object_mask"] = imp.importance_order(object_mask.float() + 0.5 * jitter)
    if probe_images is not None:
        comparison = compare_with_probes(
            model, train_images=probe_images, train_labels=probe_labels, test_images=images,
            test_labels=labels, alpha=config.probe_alpha, batch_size=bs, progress=progress)
        summary["linear_probes"] = _probes(comparison, n_prefix=n_prefix, n_train=len(probe_images))
        orders["linear_probe"] = imp.importance_order(
            probe_importance(comparison.resid_rank, n_prefix=n_prefix))
    curves = _perturbation_curves(model, images, labels=labels, orders=orders, config=config)
    summary["perturbation"] = {
        **_aucs(curves),
        "curves": {name: _floats(c) for name, c in curves.items()},
        "fraction_removed": _floats(torch.arange(n_total) / n_total),
    }
    if by_block is not None:
        summary["perturbation"]["diagnostics"] = _importance_diagnostics(
            model, images, labels=labels, by_block=by_block, orders=orders,
            object_mask=object_mask, config=config)

    feature_scores: dict[str, Tensor] = {}
    if saes:
        summary["feature_lens"], feature_scores = _feature_lens(model, saes, config=config)
    return LensResults(summary, token_scores, importance, curves, feature_scores)
