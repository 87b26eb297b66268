"""One forward and one backward pass of the spliced, linearised model: everything a graph needs.

The SAEs are spliced in with their errors kept (the model is exact) and the errors are leaves, as
in SAELens. With the linearisation of `linearise.py`, the gradient that reaches a layer's latents
`z_l` is exactly `ghat_l` of docs/method.md §3: for the top SAE layer `s_t (g_t . W_dec[i])`, and
below it `sum_o J_o[t] . W_dec[i] s_t`, because the only path from `z_l` to the metric goes through
block l+1 and the latents `z_{l+1}` (errors and decoder statistics are constants). Node scores of
every layer therefore come from this single backward pass; edges (`engine.py`) split them by target.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.linearise import (
    FULL,
    SAE_LN_EPS,
    Linearisation,
    activation_gate,
    activation_name,
    linearised,
    sae_input_stats,
)
from rrm_plugin.attribution.targets import check_metric, metric_values, resolve_classes
from rrm_plugin.errors import RRMUserError
from rrm_plugin.replacement.splice import splice_saes

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


class LayerTrace(NamedTuple):
    """One SAE layer of a traced batch (token position on axis 1)."""

    hook_name: str
    block: int
    acts: Float[Tensor, "batch pos d_sae"]
    """Latent activations z."""
    delta: Float[Tensor, "batch pos d_sae"]
    """z minus its baseline."""
    scale: Float[Tensor, "batch pos 1"]
    """SAE input std s: the decoder multiplies by it (x_hat = s (z W_dec + b_dec) + mu)."""
    enc_scale: Float[Tensor, "batch pos 1"]
    """What the encoder divides the centred input by (s + eps)."""
    error_delta: Float[Tensor, "batch pos d_model"]
    """SAE error minus its baseline."""
    grad_acts: Float[Tensor, "batch pos d_sae"]
    """ghat: gradient of the metric w.r.t. z (through features only)."""
    grad_stream: Float[Tensor, "batch pos d_model"]
    """Gradient of the metric w.r.t. the spliced residual stream x_l."""

    @property
    def node_scores(self) -> Float[Tensor, "batch pos d_sae"]:
        """Per-token node scores ghat * (z - z~)."""
        return self.grad_acts * self.delta

    @property
    def error_scores(self) -> Float[Tensor, " batch"]:
        return (self.grad_stream * self.error_delta).sum((1, 2))


class BlockConstants(NamedTuple):
    """Constants of a linearised block, as captured by its host hook points."""

    ln1_scale: Float[Tensor, "batch pos 1"]
    pattern: Float[Tensor, "batch head query key"]
    ln2_scale: Float[Tensor, "batch pos 1"] | None
    gate: Float[Tensor, "batch pos d_mlp"] | None


class AttributionForward(NamedTuple):
    logits: Float[Tensor, "batch classes"]
    classes: Int[Tensor, " batch"]
    metric: str
    values: Float[Tensor, " batch"]
    layers: list[LayerTrace]
    blocks: dict[int, BlockConstants]
    """Constants of the blocks that join consecutive SAE layers (empty unless requested)."""
    linearisation: Linearisation


def sae_layers(saes: Mapping[str, SAE]) -> list[tuple[int, str]]:
    """`(block, hook_name)` of each SAE, bottom to top; SAEs must sit on `hook_resid_post`."""
    layers = []
    for hook_name in saes:
        match = _RESID_POST.match(hook_name)
        if match is None:
            raise RRMUserError(
                f"attribution needs residual-stream SAEs at blocks.<l>.hook_resid_post; "
                f"got one at {hook_name!r}"
            )
        layers.append((int(match.group(1)), hook_name))
    if not layers:
        raise RRMUserError("need at least one SAE to attribute through")
    return sorted(layers)


def check_consecutive(layers: Sequence[tuple[int, str]]) -> None:
    blocks = [b for b, _ in layers]
    gaps = [(a, b) for a, b in zip(blocks, blocks[1:], strict=False) if b != a + 1]
    if gaps:
        raise RRMUserError(
            f"edges join adjacent SAE layers through one block; SAE layers {blocks} skip "
            f"between {gaps}"
        )


ATTRIBUTION_DTYPES = (torch.float32, torch.float64)


def check_precision(model: nn.Module, saes: Mapping[str, SAE]) -> None:
    """Refuse half-precision weights: node scores and edges are products and sums of many
    small gradient terms, and bfloat16 / float16 (8 / 11 significant bits, relative steps of
    ~4e-3 / ~5e-4) would change which latents the TopK keeps and give graphs that match the
    float32 model's only to a few percent, silently."""
    found = {f"model ({p.dtype})" for p in model.parameters() if p.dtype not in ATTRIBUTION_DTYPES}
    found |= {f"SAE {h} ({s.W_dec.dtype})" for h, s in saes.items()
              if s.W_dec.dtype not in ATTRIBUTION_DTYPES}
    if found:
        raise RRMUserError(
            f"attribution needs float32 or float64 weights; got {', '.join(sorted(found))}. "
            "Half precision changes the TopK selections and the summed edge terms; load the "
            "model and SAEs with dtype float32 (the default) or float64")


def attribution_forward(
    model: nn.Module,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "batch c h w"],
    *,
    baselines: Baselines,
    classes: int | Sequence[int] | Tensor | None = None,
    metric: str = "adjusted_logit",
    linearisation: Linearisation = FULL,
    capture_blocks: bool = False,
) -> AttributionForward:
    """Forward the spliced model, then backpropagate the metric to every layer's latents.

    Args:
        model: HookedViT.
        saes: `{hook_name: SAE}` on `blocks.<l>.hook_resid_post`.
        images: Image batch.
        baselines: Per-position baselines for `saes`.
        classes: Target class per image (default: the predicted class).
        metric: `"adjusted_logit"` (default) or `"logit"`.
        linearisation: Which quantities are constants in the backward pass.
        capture_blocks: Also keep the constants of the blocks between SAE layers (for edges).
    """
    check_metric(metric)
    check_precision(model, saes)
    layers = sae_layers(saes)
    if capture_blocks:
        check_consecutive(layers)
    baselines.check(saes)
    base = baselines.to(images.device)
    block_ids = [b + 1 for b, _ in layers[:-1]] if capture_blocks else []

    live: dict[str, Tensor] = {}
    keep_live = lambda tensor, hook: live.__setitem__(hook.name, tensor)  # noqa: E731
    fixed: dict[str, Tensor] = {}
    keep_fixed = lambda tensor, hook: fixed.__setitem__(hook.name, tensor.detach())  # noqa: E731
    hooks = []
    for _, h in layers:
        hooks += [(f"{h}.hook_sae_acts_post", keep_live), (f"{h}.hook_sae_output", keep_live),
                  (f"{h}.hook_sae_input", keep_fixed), (f"{h}.hook_sae_error", keep_fixed)]
    for b in block_ids:
        names = [f"blocks.{b}.ln1.hook_scale", f"blocks.{b}.attn.hook_pattern"]
        if hasattr(model.blocks[b], "mlp"):
            names += [f"blocks.{b}.ln2.hook_scale", f"blocks.{b}.mlp.hook_pre"]
        hooks += [(n, keep_fixed) for n in names if n in model.hook_dict]

    with splice_saes(model, saes, keep_error=True), linearised(
        model, saes, config=linearisation
    ), model.hooks(fwd_hooks=hooks), torch.enable_grad():
        # The input requires grad so the graph exists even for a frozen model (backward stops at
        # the requested tensors, so nothing is computed for the input itself).
        logits = model(images.detach().requires_grad_(True))
        target_classes = resolve_classes(logits.detach(), classes)
        values = metric_values(logits, target_classes, metric)
        wrt = [live[f"{h}.hook_sae_acts_post"] for _, h in layers]
        wrt += [live[f"{h}.hook_sae_output"] for _, h in layers]
        grads = torch.autograd.grad(values.sum(), wrt, allow_unused=True)

    n_tokens = live[f"{layers[0][1]}.hook_sae_acts_post"].shape[1]
    baselines.check(saes, n_tokens)
    n = len(layers)
    traces = []
    for k, (block, h) in enumerate(layers):
        acts = live[f"{h}.hook_sae_acts_post"].detach()
        _, std = sae_input_stats(fixed[f"{h}.hook_sae_input"])
        grad_acts = grads[k] if grads[k] is not None else torch.zeros_like(acts)
        grad_stream = grads[n + k]
        if grad_stream is None:
            grad_stream = torch.zeros_like(fixed[f"{h}.hook_sae_error"])
        normalised = saes[h].cfg.normalize_activations == "layer_norm"
        traces.append(LayerTrace(
            hook_name=h, block=block, acts=acts, delta=acts - base.features[h],
            scale=std if normalised else torch.ones_like(std),
            enc_scale=std + SAE_LN_EPS if normalised else torch.ones_like(std),
            error_delta=fixed[f"{h}.hook_sae_error"] - base.errors[h],
            grad_acts=grad_acts, grad_stream=grad_stream,
        ))
    blocks = {b: _block_constants(model, b, fixed) for b in block_ids}
    return AttributionForward(
        logits=logits.detach(), classes=target_classes, metric=metric, values=values.detach(),
        layers=traces, blocks=blocks, linearisation=linearisation,
    )


def _block_constants(model: nn.Module, b: int, fixed: dict[str, Tensor]) -> BlockConstants:
    gate = None
    pre = fixed.get(f"blocks.{b}.mlp.hook_pre")
    if pre is not None:
        gate = activation_gate(activation_name(model))(pre)
    ln1 = fixed.get(f"blocks.{b}.ln1.hook_scale")
    pattern = fixed[f"blocks.{b}.attn.hook_pattern"]
    ones = torch.ones(*pattern.shape[:1], pattern.shape[-1], 1, device=pattern.device)
    ln2 = fixed.get(f"blocks.{b}.ln2.hook_scale")
    return BlockConstants(
        ln1_scale=ln1 if ln1 is not None else ones,
        pattern=pattern,
        ln2_scale=(ln2 if ln2 is not None else ones) if gate is not None else None,
        gate=gate,
    )
