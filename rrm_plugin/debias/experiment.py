"""The debiasing experiment: select on training and validation images, evaluate on the test.

`select_ablations` sees only the selection split (its bias-conflicting images) and the
validation split; `run_debias` then evaluates every method on the test split, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.data.spurious import group_name
from rrm_plugin.debias.ablation import Ablation, predict
from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.debias.evaluation import BootstrapResult, bootstrap_accuracy, group_accuracy
from rrm_plugin.debias.scoring import (
    activation_difference_scores,
    circuit_feature_scores,
    neuron_attribution_scores,
)
from rrm_plugin.debias.selection import Selection, choose_count, random_ablation, rank_units
from rrm_plugin.errors import RRMUserError

RRM = "rrm_circuit"
METHOD_LABELS = {
    "original": "original model (no ablation)",
    RRM: "RRM circuit features (ours)",
    "random_features": "random features, same number",
    "neuron_attribution": "residual neurons, same attribution",
    "activation_difference": "features by activation difference (no circuit)",
    "balanced_retrain": "retrained on group-balanced data (reference)",
}


@dataclass(frozen=True)
class DebiasConfig:
    """How features are selected and results estimated.

    Args:
        counts: Candidate numbers of units to ablate; the validation split picks one per method.
        node_threshold: circuit-tracer node influence threshold of the RRM circuits.
        edge_threshold: circuit-tracer edge influence threshold of the RRM circuits.
        random_draws: Random feature sets averaged in the random baseline.
        n_bootstrap: Bootstrap resamples of the test images.
        seed: Seed of the random baseline and of the bootstrap.
        batch_size: Images per forward pass.
    """

    counts: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    random_draws: int = 20
    n_bootstrap: int = 2000
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.counts or any(isinstance(n, bool) or int(n) != n or n < 1
                                  for n in self.counts):
            raise RRMUserError(f"counts must be positive integers, got {self.counts}")
        for name in ("random_draws", "n_bootstrap", "batch_size"):
            if getattr(self, name) < 1:
                raise RRMUserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("node_threshold", "edge_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise RRMUserError(f"{name} must be in (0, 1], got {getattr(self, name)}")


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
    """Each ranked method's ablation, scored on the bias-conflicting selection images and sized
    on the validation split."""
    conflicting = selection.subset(torch.nonzero(selection.conflicting)[:, 0])
    if len(conflicting.images) == 0:
        raise RRMUserError("the selection split has no bias-conflicting images (spurious != label)")
    hooks = list(saes)
    scores = {
        RRM: ("feature", circuit_feature_scores(
            model, saes, conflicting, baselines=baselines, node_threshold=config.node_threshold,
            edge_threshold=config.edge_threshold, batch_size=config.batch_size,
            progress=progress)),
        "neuron_attribution": ("neuron", neuron_attribution_scores(
            model, hooks, conflicting, baselines=baselines, batch_size=config.batch_size)),
        "activation_difference": ("feature", activation_difference_scores(
            model, saes, conflicting, batch_size=config.batch_size)),
    }
    chosen = {}
    for method, (kind, unit_scores) in tqdm(scores.items(), desc="choose counts",
                                            disable=not progress, leave=False):
        chosen[method] = choose_count(
            model, rank_units(unit_scores), validation, method=method, kind=kind,
            counts=config.counts, baselines=baselines, saes=saes, batch_size=config.batch_size)
    return chosen


@dataclass
class DebiasResult:
    """Test accuracies of every method, with their selections and bootstrap intervals."""

    config: DebiasConfig
    selections: dict[str, Selection]
    correct: dict[str, Tensor]
    """Per method, 1/0 per test image (random: mean over draws)."""
    groups: Tensor
    bootstrap: BootstrapResult
    split_sizes: dict[str, int]

    def to_json_dict(self) -> dict[str, Any]:
        accuracies = {m: group_accuracy(c, self.groups) for m, c in self.correct.items()}
        sizes = next(iter(accuracies.values())).sizes
        methods = {}
        for m in self.correct:
            selection = self.selections.get(m)
            methods[m] = {
                "label": METHOD_LABELS.get(m, m),
                "n_units": selection.ablation.size if selection else 0,
                "unit_kind": selection.ablation.kind if selection else None,
                "units": selection.ablation.as_lists() if selection else {},
                "validation": {str(n): v for n, v in selection.validation.items()}
                if selection else {},
                "average": self.bootstrap.average[m]._asdict(),
                "worst_group": self.bootstrap.worst_group[m]._asdict(),
                "worst_group_margin_of_rrm": self.bootstrap.worst_group_margin[m]._asdict(),
                "per_group": {group_name(g): a for g, a in accuracies[m].per_group.items()},
            }
        return {
            "format": "rrm-debias/1", "config": asdict(self.config),
            "split_sizes": self.split_sizes,
            "test_group_sizes": {group_name(g): s for g, s in sizes.items()},
            "methods": methods,
        }

    def markdown_table(self) -> str:
        """One row per method: units, average and worst-group accuracy with 95% intervals,
        and the RRM's worst-group margin over it."""
        def cell(iv) -> str:
            return f"{100 * iv.estimate:.1f} [{100 * iv.low:.1f}, {100 * iv.high:.1f}]"

        lines = ["| method | units ablated | average acc. % [95% CI] | worst-group acc. % "
                 "[95% CI] | RRM worst-group margin, points [95% CI] |",
                 "|---|---|---|---|---|"]
        for m in self.correct:
            selection = self.selections.get(m)
            units = f"{selection.ablation.size} {selection.ablation.kind}s" if selection else "-"
            margin = "-" if m == RRM else cell(self.bootstrap.worst_group_margin[m])
            lines.append(f"| {METHOD_LABELS.get(m, m)} | {units} | "
                         f"{cell(self.bootstrap.average[m])} | "
                         f"{cell(self.bootstrap.worst_group[m])} | {margin} |")
        return "\n".join(lines)


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
) -> DebiasResult:
    """Select ablations (selection + validation splits only), then evaluate them on `test`.

    Args:
        model: The biased HookedViT.
        saes: Its SAEs on consecutive block outputs.
        selection: Training images; its bias-conflicting ones are scored.
        validation: Held-out training-distribution images with every group present.
        test: Evaluation images (used only after every selection is fixed).
        baselines: The SAEs' baselines (attribution reference and ablation value).
        config: Counts, pruning thresholds, random draws, bootstrap.
        reference_model: The same architecture retrained on group-balanced data (upper
            reference row), if given.
    """
    n_classes = model.cfg.n_classes
    for name, split in (("selection", selection), ("validation", validation), ("test", test)):
        split.check(name=name, n_classes=n_classes)
    baselines.check(saes, model=model)
    chosen = select_ablations(model, saes, selection=selection, validation=validation,
                              baselines=baselines, config=config, progress=progress)
    labels = test.labels.cpu()

    def correct(ablation: Ablation | None, on: nn.Module = model) -> Tensor:
        predicted = predict(on, test.images, saes=saes, ablation=ablation, baselines=baselines,
                            batch_size=config.batch_size)
        return (predicted == labels).float()

    results = {"original": correct(None), RRM: correct(chosen[RRM].ablation)}
    generator = torch.Generator().manual_seed(config.seed)
    widths = {h: sae.cfg.d_sae for h, sae in saes.items()}
    n_rrm = chosen[RRM].ablation.size
    draws = [random_ablation(widths, n_rrm, kind="feature", generator=generator)
             for _ in range(config.random_draws)]
    results["random_features"] = torch.stack([correct(a) for a in tqdm(
        draws, desc="random features", disable=not progress, leave=False)]).mean(0)
    for method in ("neuron_attribution", "activation_difference"):
        results[method] = correct(chosen[method].ablation)
    if reference_model is not None:
        results["balanced_retrain"] = correct(None, reference_model)
    groups = test.groups.cpu()
    # The random row reports its size and, as an example, the first of its draws.
    selections = {**chosen, "random_features": Selection("random_features", draws[0], {})}
    return DebiasResult(
        config=config, selections=selections, correct=results, groups=groups,
        bootstrap=bootstrap_accuracy(results, groups, reference=RRM,
                                     n_bootstrap=config.n_bootstrap, seed=config.seed),
        split_sizes={"selection": len(selection.images),
                     "selection_conflicting": int(selection.conflicting.sum()),
                     "validation": len(validation.images), "test": len(test.images)})

