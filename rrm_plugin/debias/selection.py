"""Rank units by score and choose how many to ablate on the validation split (never the test)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.debias.ablation import Ablation, UnitKind, predict
from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.debias.evaluation import group_accuracy
from rrm_plugin.errors import RRMUserError


class Ranking(NamedTuple):
    """Units with a positive score, strongest first."""

    hook_names: list[str]
    hook: Int[Tensor, " n"]
    """Index into `hook_names` of each unit."""
    index: Int[Tensor, " n"]
    score: Float[Tensor, " n"]


class Selection(NamedTuple):
    """The units a method ablates, and the validation accuracies that chose their number."""

    method: str
    ablation: Ablation
    validation: dict[int, dict[str, float]]
    """Per candidate count: validation `average` and `worst_group` accuracy."""


def rank_units(scores: Mapping[str, Float[Tensor, " units"]]) -> Ranking:
    """All units with a positive score, sorted by score (ties: lower layer, lower index first)."""
    names = list(scores)
    hook = torch.cat([torch.full((len(s),), k) for k, s in enumerate(scores.values())])
    index = torch.cat([torch.arange(len(s)) for s in scores.values()])
    score = torch.cat([s.detach().float().cpu() for s in scores.values()])
    if not torch.isfinite(score).all():
        raise RRMUserError("unit scores contain NaN or inf")
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[score[order] > 0]
    return Ranking(names, hook[order], index[order], score[order])


def top_ablation(ranking: Ranking, n: int, *, kind: UnitKind) -> Ablation:
    """The first `n` units of `ranking`."""
    hook, index = ranking.hook[:n], ranking.index[:n]
    return Ablation(kind, {h: index[hook == k] for k, h in enumerate(ranking.hook_names)})


def random_ablation(widths: Mapping[str, int], n: int, *, kind: UnitKind,
                    generator: torch.Generator) -> Ablation:
    """`n` units drawn uniformly without replacement from every unit of every hook."""
    total = sum(widths.values())
    if not 0 <= n <= total:
        raise RRMUserError(f"cannot draw {n} of {total} units")
    flat = torch.randperm(total, generator=generator)[:n]
    units, offset = {}, 0
    for h, width in widths.items():
        chosen = flat[(flat >= offset) & (flat < offset + width)] - offset
        units[h] = torch.sort(chosen).values
        offset += width
    return Ablation(kind, units)


def choose_count(
    model: nn.Module,
    ranking: Ranking,
    validation: SpuriousSplit,
    *,
    method: str,
    kind: UnitKind,
    counts: Sequence[int],
    baselines: Baselines,
    saes: Mapping[str, SAE] | None = None,
    batch_size: int = 256,
) -> Selection:
    """Ablate the top `n` units for each `n` in `counts` (at most the positive ones) and keep the
    `n` with the best validation worst-group accuracy (ties: better average, then fewer units)."""
    candidates = sorted({min(int(n), len(ranking.score)) for n in counts if n >= 0} | {0})
    results: dict[int, dict[str, float]] = {}
    for n in candidates:
        ablation = top_ablation(ranking, n, kind=kind)
        predicted = predict(model, validation.images, saes=saes, ablation=ablation,
                            baselines=baselines, batch_size=batch_size)
        accuracy = group_accuracy((predicted == validation.labels.cpu()).float(),
                                  validation.groups.cpu())
        results[n] = {"average": accuracy.average, "worst_group": accuracy.worst_group}
    best = max(candidates, key=lambda n: (results[n]["worst_group"], results[n]["average"], -n))
    return Selection(method, top_ablation(ranking, best, kind=kind), results)
