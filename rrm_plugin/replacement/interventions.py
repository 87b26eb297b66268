"""Feature interventions: set or scale chosen SAE features at chosen tokens.

They are ordinary host forward hooks on `<hook>.hook_sae_acts_post`, for `run_with_hooks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rrm_plugin.errors import OutOfRangeError, RRMUserError, UnknownNameError


@dataclass(frozen=True)
class FeatureIntervention:
    """Change of some features at one spliced hook point.

    Args:
        hook_name: Hook point of the SAE, e.g. `"blocks.1.hook_resid_post"`.
        features: Latent indices to change.
        tokens: Token positions to change (default: all tokens).
        value: Set the features to this value ...
        scale: ... or multiply them by this factor (exactly one of the two).
    """

    hook_name: str
    features: Sequence[int]
    tokens: Sequence[int] | None = None
    value: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.scale is None):
            raise RRMUserError("give exactly one of value= or scale=")
        for name in ("value", "scale"):
            number = getattr(self, name)
            if number is None:
                continue
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise TypeError(f"FeatureIntervention {name}= must be a number, got {number!r}")
            if not math.isfinite(number):
                raise RRMUserError(f"FeatureIntervention {name}= must be finite, got {number}")
        for name in ("features", "tokens"):
            indices = getattr(self, name)
            if indices is None:
                continue
            bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int)]
            if bad or isinstance(indices, (str, bytes)):
                raise TypeError(f"FeatureIntervention {name}= must be integer indices, got "
                                f"{indices!r}")

    def apply(self, acts: Tensor) -> Tensor:
        d_sae = acts.shape[-1]
        feats = torch.as_tensor(list(self.features), dtype=torch.long, device=acts.device)
        if len(feats) and (feats.min() < 0 or feats.max() >= d_sae):
            raise OutOfRangeError(
                f"feature indices {list(self.features)} out of range [0, {d_sae})")
        n_pos = acts.shape[-2]
        tokens = torch.arange(n_pos) if self.tokens is None else torch.as_tensor(list(self.tokens))
        if len(tokens) and (tokens.min() < -n_pos or tokens.max() >= n_pos):
            raise OutOfRangeError(
                f"token positions {tokens.tolist()} out of range for {n_pos} tokens")
        mask = torch.zeros(n_pos, d_sae, dtype=torch.bool, device=acts.device)
        mask[tokens.to(acts.device)[:, None], feats[None, :]] = True
        changed = torch.full_like(acts, self.value) if self.value is not None else acts * self.scale
        return torch.where(mask, changed, acts)


def intervention_hooks(
    interventions: Sequence[FeatureIntervention], *, model=None,
) -> list[tuple[str, Callable]]:
    """`fwd_hooks` for the host's `run_with_hooks`, one per intervention.

    With `model`, checks that each intervention's SAE is spliced in (inside `splice_saes`).
    """
    names = [f"{iv.hook_name}.hook_sae_acts_post" for iv in interventions]
    if model is not None:
        missing = [iv.hook_name for iv, n in zip(interventions, names, strict=True)
                   if n not in model.hook_dict]
        if missing:
            raise UnknownNameError(
                f"no SAE is spliced at {missing}: run the interventions inside "
                "`with rrm_plugin.splice_saes(model, saes):` with SAEs at those hooks")

    def make(intervention: FeatureIntervention) -> Callable:
        def hook(acts: Tensor, hook) -> Tensor:
            return intervention.apply(acts)

        return hook

    return [(name, make(iv)) for name, iv in zip(names, interventions, strict=True)]
