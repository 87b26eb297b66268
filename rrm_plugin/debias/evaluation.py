"""Average and worst-group accuracy, with stratified, paired bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from rrm_plugin.errors import RRMUserError, UnknownNameError


class GroupAccuracy(NamedTuple):
    average: float
    """Over all images."""
    worst_group: float
    worst: int
    """The group with the lowest accuracy."""
    per_group: dict[int, float]
    sizes: dict[int, int]


def group_accuracy(correct: Float[Tensor, " n"], groups: Int[Tensor, " n"]) -> GroupAccuracy:
    """`correct` is 1/0 per image (or the expected correctness, e.g. over random draws)."""
    if correct.shape != groups.shape or correct.ndim != 1:
        raise RRMUserError(f"correct {tuple(correct.shape)} and groups {tuple(groups.shape)} must "
                           "be vectors of one length")
    ids, inverse, sizes = torch.unique(groups, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, correct.double())
    per_group = sums / sizes
    worst = int(per_group.argmin())
    return GroupAccuracy(
        average=float(correct.double().mean()), worst_group=float(per_group[worst]),
        worst=int(ids[worst]), per_group=dict(zip(ids.tolist(), per_group.tolist(), strict=True)),
        sizes=dict(zip(ids.tolist(), sizes.tolist(), strict=True)))


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float


class BootstrapResult(NamedTuple):
    average: dict[str, Interval]
    worst_group: dict[str, Interval]
    worst_group_margin: dict[str, Interval]
    """Worst-group accuracy of the reference method minus each method's (paired resamples)."""


def bootstrap_accuracy(
    correct: Mapping[str, Float[Tensor, " n"]],
    groups: Int[Tensor, " n"],
    *,
    reference: str,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapResult:
    """Percentile intervals from resampling images within each group (group sizes fixed), with
    the same resamples for every method so that differences are paired."""
    if reference not in correct:
        raise UnknownNameError(f"reference method {reference!r} is not among {list(correct)}")
    if n_bootstrap < 1:
        raise RRMUserError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    names = list(correct)
    table = torch.stack([correct[m].double().cpu() for m in names])  # [methods, n]
    generator = torch.Generator().manual_seed(seed)
    group_means, sizes = [], []
    for g in torch.unique(groups):
        members = torch.nonzero(groups.cpu() == g)[:, 0]
        draw = members[torch.randint(len(members), (n_bootstrap, len(members)),
                                     generator=generator)]
        group_means.append(table[:, draw].mean(-1))  # [methods, n_bootstrap]
        sizes.append(len(members))
    stacked = torch.stack(group_means, -1)  # [methods, n_bootstrap, groups]
    weights = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    average = (stacked * weights).sum(-1)
    worst = stacked.min(-1).values
    margin = worst[names.index(reference)] - worst
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)

    def interval(point: float, samples: Tensor) -> Interval:
        low, high = torch.quantile(samples, q).tolist()
        return Interval(point, low, high)

    point = {m: group_accuracy(correct[m].cpu().float(), groups.cpu()) for m in names}
    return BootstrapResult(
        average={m: interval(point[m].average, average[i]) for i, m in enumerate(names)},
        worst_group={m: interval(point[m].worst_group, worst[i]) for i, m in enumerate(names)},
        worst_group_margin={m: interval(point[reference].worst_group - point[m].worst_group,
                                        margin[i]) for i, m in enumerate(names)},
    )
