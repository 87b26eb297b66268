"""The circuits each faithfulness method compares: random circuits, residual-neuron circuits and
the readout of a masked forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.linearise import FULL, linearised
from rrm_plugin.attribution.targets import metric_values, readout


def _dense_rrm_scores(forward) -> list[Float[Tensor, "batch d_sae_plus_error"]]:
    return [torch.cat([t.node_scores.sum(1), t.error_scores[:, None]], dim=1)
            for t in forward.layers]


def random_masks(
    counts: Sequence[Int[Tensor, " batch"]], sizes: Sequence[int],
    generators: Sequence[torch.Generator],
) -> list[Bool[Tensor, "batch n"]]:
    """Per layer and image, `counts[l][i]` slots of `sizes[l]` drawn without replacement from
    image `i`'s own generator, so an image's draws do not depend on the batch it is in."""
    masks = []
    for count, size in zip(counts, sizes, strict=True):
        if len(count) != len(generators):  # a caller's bug, not a user error
            raise RuntimeError(f"{len(count)} counts but {len(generators)} generators")
        # Drawn on the CPU from each image's CPU generator (the same circuits on every device),
        # then compared on the counts' device.
        noise = torch.stack([torch.rand(size, generator=g) for g in generators]).to(count.device)
        masks.append(torch.argsort(noise, dim=-1) < count[:, None])
    return masks


def authors_random_counts(value: float, sizes: Sequence[int], batch: int
                          ) -> list[Int[Tensor, " batch"]]:
    """The authors' random rule: `int(value * size)` slots per layer, error slot included."""
    return [torch.full((batch,), int(value * size), dtype=torch.long) for size in sizes]


def neuron_scores(
    model: nn.Module, hook_names: Sequence[str], images: Tensor, classes: Tensor,
    baselines: Baselines, metric: str,
) -> list[Float[Tensor, "batch d_model"]]:
    """gradient x (x - x~) per residual dimension, summed over tokens, in the linearised model."""
    live: dict[str, Tensor] = {}
    hooks = [(h, lambda t, hook: live.__setitem__(hook.name, t)) for h in hook_names]
    with linearised(model, config=FULL), model.hooks(fwd_hooks=hooks), torch.enable_grad():
        logits = model(images.detach().requires_grad_(True))  # also for frozen parameters
        value = metric_values(logits, classes, metric).sum()
        grads = torch.autograd.grad(value, [live[h] for h in hook_names])
    return [(g * (live[h].detach() - baselines.resid[h])).sum(1)
            for g, h in zip(grads, hook_names, strict=True)]


def _neuron_hooks(hook_names, masks, baselines, mode) -> list[tuple[str, Callable]]:
    hooks = []
    for h, mask in zip(hook_names, masks, strict=True):
        keep = mask[:, None, :] if mode == "insertion" else ~mask[:, None, :]
        hooks.append((h, lambda x, hook, keep=keep, base=baselines.resid[h]:
                      torch.where(keep, x, base)))
    return hooks


def _readout(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    values = readout(logits, labels)
    predicted = values.pop("predicted_class")
    return {**values, "accuracy": (predicted == labels).float()}
