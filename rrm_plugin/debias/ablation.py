"""Set chosen units to their baselines: SAE latents through the replacement hook mode (errors
kept, so nothing else changes), or residual dimensions through plain host hooks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Int
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.errors import OutOfRangeError, RRMUserError, UnknownNameError
from rrm_plugin.replacement.splice import splice_saes

UnitKind = Literal["feature", "neuron"]


@dataclass(frozen=True)
class Ablation:
    """Units to set to their baselines at every token.

    Args:
        kind: `"feature"` (SAE latents at `<hook>.hook_sae_acts_post`) or `"neuron"` (residual
            dimensions at `<hook>`).
        units: `{hook_name: unit indices}`.
    """

    kind: UnitKind
    units: dict[str, Int[Tensor, " n"]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("feature", "neuron"):
            raise RRMUserError(f"unknown unit kind {self.kind!r}; expected 'feature' or 'neuron'")

    @property
    def size(self) -> int:
        return sum(len(u) for u in self.units.values())

    def as_lists(self) -> dict[str, list[int]]:
        return {h: sorted(int(i) for i in u) for h, u in self.units.items() if len(u)}


def ablation_hooks(ablation: Ablation, baselines: Baselines) -> list[tuple[str, Callable]]:
    """Forward hooks that overwrite the ablated units with their per-position baselines."""
    hooks = []
    for hook_name, index in ablation.units.items():
        if not len(index):
            continue
        if ablation.kind == "feature":
            name, base = f"{hook_name}.hook_sae_acts_post", baselines.features[hook_name]
        else:
            name, base = hook_name, baselines.resid[hook_name]
        width = base.shape[-1]
        if int(index.min()) < 0 or int(index.max()) >= width:
            raise OutOfRangeError(
                f"{ablation.kind} indices at {hook_name} must be in [0, {width}), "
                f"got {index.tolist()}")

        def hook(x: Tensor, hook, index=index, base=base) -> Tensor:
            x = x.clone()
            x[..., index.to(x.device)] = base[: x.shape[1], index].to(x)
            return x

        hooks.append((name, hook))
    return hooks


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Tensor,
    *,
    saes: Mapping[str, SAE] | None = None,
    ablation: Ablation | None = None,
    baselines: Baselines | None = None,
    batch_size: int = 256,
) -> Int[Tensor, " n"]:
    """Predicted classes, with `ablation` applied (feature ablations splice the SAEs they need)."""
    if ablation is not None and baselines is None:
        raise TypeError("an ablation needs baselines= (the values units are set to)")
    hooks = [] if ablation is None else ablation_hooks(ablation, baselines)
    spliced = {}
    if ablation is not None and ablation.kind == "feature":
        missing = [h for h in ablation.units if saes is None or h not in saes]
        if missing:
            raise UnknownNameError(
                f"feature ablation at {missing} needs the SAEs of those hooks in saes=")
        spliced = {h: saes[h] for h, u in ablation.units.items() if len(u)}
    out = []
    with splice_saes(model, spliced, keep_error=True) if spliced else nullcontext():
        for start in range(0, len(images), batch_size):
            logits = model.run_with_hooks(images[start:start + batch_size], fwd_hooks=hooks)
            out.append(logits.argmax(-1).cpu())
    return torch.cat(out)
