"""One seed of the debiasing study: select on training and validation images, evaluate on test.

`select_ablations` sees only the selection split and the validation split; DFR trains on the
validation split; `run_debias` then evaluates every method on the test split, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.data.spurious import group_name
from rrm_plugin.debias.ablation import Ablation, predict
from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.debias.dfr import DFR_CS, fit_dfr
from rrm_plugin.debias.evaluation import group_accuracy
from rrm_plugin.debias.scoring import (
    activation_difference_scores,
    attribution_feature_scores,
    neuron_attribution_scores,
)
from rrm_plugin.debias.selection import Selection, choose_count, random_ablation, rank_units
from rrm_plugin.errors import RRMUserError

RRM = "rrm_circuit"
EDGES = "rrm_circuit_edges"
PLAIN = "plain_attribution"


class Method(NamedTuple):
    label: str
    information: str
    """What the method needs beyond the biased model and unlabelled images."""


VALIDATION_GROUPS = "group labels on validation (to choose the count)"
METHODS = {
    "original": Method("original model (no ablation)", "none"),
    RRM: Method("RRM circuit attribution (pruned circuits)",
                "cue labels of training images + " + VALIDATION_GROUPS),
    EDGES: Method("RRM circuit, attribution through kept edges only",
                  "cue labels of training images + " + VALIDATION_GROUPS),
    PLAIN: Method("plain attribution, full graph (no pruning)",
                  "cue labels of training images + " + VALIDATION_GROUPS),
    "random_features": Method("random latents, the circuit's count",
                              "the circuit's count (" + VALIDATION_GROUPS + ")"),
    "neuron_attribution": Method("residual neurons, same attribution",
                                 "cue labels of training images + " + VALIDATION_GROUPS),
    "activation_difference": Method("latents by within-class activation difference",
                                    "cue labels of training images + " + VALIDATION_GROUPS),
    "dfr": Method("DFR: last layer retrained on validation",
                  "group labels on validation (to train the head and choose C)"),
    "balanced_retrain": Method("retrained on group-balanced data (reference)",
                               "group label of every training image (retraining)"),
}
RANKED = (RRM, EDGES, PLAIN, "neuron_attribution", "activation_difference")
"""Methods that rank units and ablate the top `n`, `n` chosen on validation."""


@dataclass(frozen=True)
class DebiasConfig:
    """How units are selected in one seed.

    Args:
        counts: Candidate numbers of units to ablate; the validation split picks one per method.
        node_threshold: circuit-tracer node influence threshold of the RRM circuits.
        edge_threshold: circuit-tracer edge influence threshold of the RRM circuits.
        random_draws: Random latent sets averaged in the random baseline.
        dfr_cs: DFR's candidate inverse L1 strengths.
        seed: Seed of the random baseline and of DFR's validation halves.
        batch_size: Images per forward pass.
    """

    counts: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 32)
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    random_draws: int = 5
    dfr_cs: tuple[float, ...] = DFR_CS
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.counts or any(isinstance(n, bool) or int(n) != n or n < 1
                                  for n in self.counts):
            raise RRMUserError(f"counts must be positive integers, got {self.counts}")
        for name in ("random_draws", "batch_size"):
            if getattr(self, name) < 1:
                raise RRMUserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("node_threshold", "edge_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise RRMUserError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not self.dfr_cs or any(c <= 0 for c in self.dfr_cs):
            raise RRMUserError(f"dfr_cs must be positive, got {self.dfr_cs}")


def select_ablations(
    model: nn.Module,
    saes: Mapping[str, SAE],
    *,
    selection: SpuriousSplit,
    validation: SpuriousSplit,
    baselines: Baselines,
    config: DebiasConfig = DebiasConfig(),
    progress: bool = False,
) -> dict[str, Selection]:
    """Each ranked method's ablation: attribution methods score the selection split's
    bias-conflicting images, the activation difference all of it (within class); every count
    is chosen on the validation split."""
    conflicting = selection.subset(torch.nonzero(selection.conflicting)[:, 0])
    if len(conflicting.images) == 0:
        raise RRMUserError("the selection split has no bias-conflicting images (spurious != label)")
    attribution = attribution_feature_scores(
        model, saes, conflicting, baselines=baselines, node_threshold=config.node_threshold,
        edge_threshold=config.edge_threshold, batch_size=config.batch_size, progress=progress)
    scores = {
        RRM: ("feature", attribution.circuit),
        EDGES: ("feature", attribution.edges),
        PLAIN: ("feature", attribution.full),
        "neuron_attribution": ("neuron", neuron_attribution_scores(
            model, list(saes), conflicting, baselines=baselines, batch_size=config.batch_size)),
        "activation_difference": ("feature", activation_difference_scores(
            model, saes, selection, batch_size=config.batch_size)),
    }
    chosen = {}
    for method, (kind, unit_scores) in tqdm(scores.items(), desc="choose counts",
                                            disable=not progress, leave=False):
        chosen[method] = choose_count(
            model, rank_units(unit_scores), validation, method=method, kind=kind,
            counts=config.counts, baselines=baselines, saes=saes, batch_size=config.batch_size)
    return chosen


class Accuracy(NamedTuple):
    """Test accuracies of one method in one seed (fractions)."""

    average: float
    """Over all test images (half agree, half conflict: the balanced average)."""
    worst_group: float
    agree: float
    """On images whose cue names their class."""
    conflict: float
    """On images whose cue names another class."""
    per_group: dict[str, float]


def accuracy_of(correct: Float[Tensor, " n"], split: SpuriousSplit) -> Accuracy:
    """`correct` (1/0, or a mean over draws) split by group and by cue agreement."""
    groups = group_accuracy(correct, split.groups.cpu())
    conflicting: Bool[Tensor, " n"] = split.conflicting.cpu()
    if conflicting.all() or not conflicting.any():
        raise RRMUserError("the test split needs images whose cue agrees and images whose cue "
                           "conflicts")
    return Accuracy(groups.average, groups.worst_group,
                    float(correct[~conflicting].double().mean()),
                    float(correct[conflicting].double().mean()),
                    {group_name(g): a for g, a in groups.per_group.items()})


@dataclass
class SeedResult:
    """Every method's test accuracy in one seed, with what it selected."""

    seed: int
    accuracy: dict[str, Accuracy]
    selections: dict[str, Selection]
    dfr: dict[str, Any]
    """DFR's chosen C and its held-out worst-group accuracy per C."""
    split_sizes: dict[str, int]
    test_group_sizes: dict[str, int] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        methods = {}
        for m, acc in self.accuracy.items():
            s = self.selections.get(m)
            methods[m] = {
                **acc._asdict(),
                "n_units": s.ablation.size if s else 0,
                "unit_kind": s.ablation.kind if s else None,
                "units": s.ablation.as_lists() if s else {},
                "validation": {str(n): v for n, v in s.validation.items()} if s else {},
            }
        return {"seed": self.seed, "methods": methods, "dfr": self.dfr,
                "split_sizes": self.split_sizes, "test_group_sizes": self.test_group_sizes,
                "same_units_circuit_and_plain": self.same_units(RRM, PLAIN),
                "same_units_edges_and_plain": self.same_units(EDGES, PLAIN)}

    def same_units(self, a: str, b: str) -> bool:
        """Whether methods `a` and `b` ablate exactly the same units."""
        return bool(a in self.selections and b in self.selections
                    and self.selections[a].ablation.as_lists()
                    == self.selections[b].ablation.as_lists())


def run_debias(
    model: nn.Module,
    saes: Mapping[str, SAE],
    *,
    selection: SpuriousSplit,
    validation: SpuriousSplit,
    test: SpuriousSplit,
    baselines: Baselines,
    config: DebiasConfig = DebiasConfig(),
    reference_model: nn.Module | None = None,
    progress: bool = False,
) -> SeedResult:
    """One seed: select ablations and fit DFR (selection + validation splits only), then
    evaluate every method on `test`.

    Args:
        model: The biased HookedViT.
        saes: Its SAEs on consecutive block outputs.
        selection: Training images (the attribution methods score its bias-conflicting ones).
        validation: Held-out training-distribution images with every group present.
        test: Evaluation images (used only after every selection is fixed).
        baselines: The SAEs' baselines (attribution reference and ablation value).
        config: Counts, pruning thresholds, random draws, DFR's C grid, seed.
        reference_model: The same architecture retrained on group-balanced data (upper
            reference row), if given.
    """
    n_classes = model.cfg.n_classes
    for name, split in (("selection", selection), ("validation", validation), ("test", test)):
        split.check(name=name, n_classes=n_classes)
    baselines.check(saes, model=model)
    chosen = select_ablations(model, saes, selection=selection, validation=validation,
                              baselines=baselines, config=config, progress=progress)
    head = fit_dfr(model, validation, cs=config.dfr_cs, seed=config.seed,
                   batch_size=config.batch_size)
    labels = test.labels.cpu()

    def correct(ablation: Ablation | None, on: nn.Module = model) -> Int[Tensor, " n"]:
        predicted = predict(on, test.images, saes=saes, ablation=ablation, baselines=baselines,
                            batch_size=config.batch_size)
        return (predicted == labels).float()

    results = {"original": correct(None)}
    results |= {m: correct(chosen[m].ablation) for m in (RRM, EDGES, PLAIN)}
    generator = torch.Generator().manual_seed(config.seed)
    widths = {h: sae.cfg.d_sae for h, sae in saes.items()}
    n_rrm = chosen[RRM].ablation.size
    draws = [random_ablation(widths, n_rrm, kind="feature", generator=generator)
             for _ in range(config.random_draws)]
    results["random_features"] = torch.stack([correct(a) for a in tqdm(
        draws, desc="random features", disable=not progress, leave=False)]).mean(0)
    for method in ("neuron_attribution", "activation_difference"):
        results[method] = correct(chosen[method].ablation)
    results["dfr"] = (head.predict(model, test.images, batch_size=config.batch_size)
                      == labels).float()
    if reference_model is not None:
        results["balanced_retrain"] = correct(None, reference_model)
    # The random row reports its size and, as an example, the first of its draws.
    selections = {**chosen, "random_features": Selection("random_features", draws[0], {})}
    groups = group_accuracy(results["original"], test.groups.cpu())
    return SeedResult(
        seed=config.seed, accuracy={m: accuracy_of(c, test) for m, c in results.items()},
        selections=selections,
        dfr={"c": head.c, "validation_worst_group": {str(c): v for c, v in
                                                     head.validation.items()}},
        split_sizes={"selection": len(selection.images),
                     "selection_conflicting": int(selection.conflicting.sum()),
                     "validation": len(validation.images), "test": len(test.images)},
        test_group_sizes={group_name(g): s for g, s in groups.sizes.items()})
