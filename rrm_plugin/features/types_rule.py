"""The feature-type rule: factor groups, thresholds and the random-latent floor.

Factor groups: colour = max(hue, tint); position = max(digit offset, token index); orientation =
bars' orientation; curve = arcs' curvature; digit/class = digit identity. Brightness/contrast is
measured and reported but is no type: contrast scales the response of every detector (an edge
detector fires more on brighter strokes), so it would otherwise pull edge features to colour.

- `dead`: the feature fires on fewer than `DEAD_FRACTION` of the probe images;
- otherwise the best group's excess eta squared must be significant (permutation p <= `MAX_P`),
  >= `MIN_EXCESS`, >= the `RANDOM_QUANTILE` quantile of the same group's score over the live
  random latents (`features/types_null.py`), and >= `MARGIN` x the second best group's; else
  `mixed`.

The thresholds are fixed by hand; `features/types_sensitivity.py` recomputes the shares over a
range of each.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rrm_plugin.errors import RRMUserError

FACTORS = ("position", "hue", "tint", "brightness", "digit", "orientation", "curve",
           "position_token")
GROUPS: dict[str, tuple[str, ...]] = {
    "position": ("position", "position_token"),
    "colour": ("hue", "tint"),
    "orientation": ("orientation",),
    "curve": ("curve",),
    "digit/class": ("digit",),
}
TYPES = (*GROUPS, "mixed", "dead")
MIN_EXCESS = 0.3
RANDOM_QUANTILE = 0.99
MARGIN = 1.5
MAX_P = 0.01
DEAD_FRACTION = 0.01


def group_scores(eta2: Tensor, null_mean: Tensor, p_values: Tensor) -> Tensor:
    """`[d_sae, groups]` best significant excess eta squared of each type group."""
    excess = torch.where(p_values <= MAX_P, (eta2 - null_mean).clamp_min(0), 0.0)
    index = {f: i for i, f in enumerate(FACTORS)}
    return torch.stack([excess[:, [index[f] for f in fs]].amax(1) for fs in GROUPS.values()],
                       dim=1)


def random_floor(
    scores: Tensor, fire_fraction: Tensor, *, quantile: float = RANDOM_QUANTILE,
    dead_fraction: float = DEAD_FRACTION,
) -> Tensor:
    """`[groups]` floor: the `quantile` of each group's score over the live random latents.

    Dead random latents are left out, as dead features are typed `dead` before any score counts.
    With no live random latent no random latent can be typed, so the floor is 0 (the fixed
    threshold alone).
    """
    if not 0 < quantile < 1:
        raise RRMUserError(f"quantile must be in (0, 1), got {quantile}")
    live = fire_fraction >= dead_fraction
    if not live.any():
        return torch.zeros(scores.shape[1])
    return scores[live].float().quantile(quantile, dim=0)


def type_labels(
    scores: Tensor, fire_fraction: Tensor, floor: Tensor | None = None, *,
    min_excess: float = MIN_EXCESS, margin: float = MARGIN, dead_fraction: float = DEAD_FRACTION,
) -> list[str]:
    """Type of every feature from its group scores `[d_sae, groups]` (rule in the docstring)."""
    floor = torch.zeros(scores.shape[1]) if floor is None else floor
    need = floor.clamp_min(min_excess)
    ranked = scores.sort(dim=1, descending=True)
    best, second = ranked.values[:, 0], ranked.values[:, 1]
    top = ranked.indices[:, 0]
    typed = (best >= need[top]) & (best >= margin * second)
    dead = fire_fraction < dead_fraction
    names = list(GROUPS)
    return ["dead" if d else names[int(i)] if t else "mixed"
            for d, t, i in zip(dead.tolist(), typed.tolist(), top.tolist(), strict=True)]


def assign_types(
    eta2: Tensor, null_mean: Tensor, p_values: Tensor, fire_fraction: Tensor,
    floor: Tensor | None = None,
) -> tuple[Tensor, list[str]]:
    """`(group_scores [d_sae, groups], types)` at the default thresholds.

    Args:
        eta2: `[d_sae, factors]`.
        null_mean: `[d_sae, factors]` mean null eta squared.
        p_values: `[d_sae, factors]`.
        fire_fraction: `[d_sae]` share of probe images where the feature fires.
        floor: `[groups]` per-group minimum score (random-latent quantile), or None.
    """
    scores = group_scores(eta2, null_mean, p_values)
    return scores, type_labels(scores, fire_fraction, floor)


def shares(types: list[str]) -> dict[str, float]:
    """Share of every type (`TYPES` order)."""
    return {t: sum(x == t for x in types) / max(1, len(types)) for t in TYPES}
