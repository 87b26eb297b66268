"""Linearised backward pass ("LibraGrad", docs/method.md section 2) through the host's hook points.

Forward values are never changed. In the backward pass these are constants: the softmax attention
pattern, every LayerNorm's standard deviation (mean-centring stays differentiable), the MLP gate
(`act(x) = x * gate(x)` with `gate` constant) and the SAE's per-token input std. With them frozen,
each transformer block is affine in its input.

Two context managers:

- `linearised(model, saes)`: the freezes above, as host forward hooks (`attn.hook_pattern`,
  `*.hook_scale`, `mlp.hook_pre` / `mlp.hook_post`) plus SAE normalisation functions whose std is
  a constant. In both modes the SAE decoder treats the input's mean and std as constants, so a
  reconstruction depends on its input only through the latents (`x_hat_l(z_l)` of docs/method.md).
- `frozen(model, saes, constants)`: the same model with every one of those constants (and the TopK
  selections and SAE errors) *replaced* by values captured at one input with `capture_constants`.
  Its forward pass is exactly affine in any residual stream; tests use it to check the linearised
  backward pass against finite differences, which are exact for an affine map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.errors import RRMUserError
from rrm_plugin.saes.normalisation import SAE_LN_EPS
from rrm_plugin.saes.normalisation import input_stats as sae_input_stats


@dataclass(frozen=True)
class Linearisation:
    """Which forward quantities are constants in the backward pass.

    Args:
        attention_pattern: Softmax attention patterns (`blocks.{l}.attn.hook_pattern`).
        layer_norm_scale: LayerNorm standard deviations (`*.hook_scale`, final LayerNorm included).
        gelu_gate: The MLP gate `gate(x) = act(x) / x`, e.g. `Phi(x)` for the exact GELU.
        sae_input_std: The per-token std `s` that standardises each SAE's input.
    """

    attention_pattern: bool = True
    layer_norm_scale: bool = True
    gelu_gate: bool = True
    sae_input_std: bool = True


FULL = Linearisation()
NONE = Linearisation(
    attention_pattern=False, layer_norm_scale=False, gelu_gate=False, sae_input_std=False
)


def activation_name(model: nn.Module) -> str:
    """MLP activation of a HookedViT (`cfg.activation_name`) or TransformerLens (`cfg.act_fn`)."""
    cfg = model.cfg
    name = getattr(cfg, "activation_name", None) or getattr(cfg, "act_fn", None)
    if name is None:
        raise RRMUserError("model config names no MLP activation (activation_name / act_fn)")
    return name


def activation_gate(name: str) -> Callable[[Tensor], Tensor]:
    """`gate(x)` with `act(x) = x * gate(x)` for the activations whose gate is defined."""
    if name == "gelu":
        return lambda x: 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
    if name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        c = math.sqrt(2.0 / math.pi)
        return lambda x: 0.5 * (1.0 + torch.tanh(c * (x + 0.044715 * x.pow(3))))
    if name == "quick_gelu":  # CLIP: x * sigmoid(1.702 x)
        return lambda x: torch.sigmoid(1.702 * x)
    if name == "relu":
        return lambda x: (x > 0).to(x.dtype)
    if name == "silu":
        return torch.sigmoid
    raise RRMUserError(
        f"cannot linearise MLP activation {name!r}; "
        "supported: gelu, gelu_new, gelu_fast, quick_gelu, relu, silu"
    )


def _hooks_named(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    return [name for name in model.hook_dict if name.endswith(suffixes)]


def _detach_hook(tensor: Tensor, hook) -> Tensor:
    return tensor.detach()


def _gate_hooks(model: nn.Module) -> list[tuple[str, Callable]]:
    """`mlp.hook_pre` remembers the pre-activation; `mlp.hook_post` swaps in the frozen gate."""
    gate = activation_gate(activation_name(model))
    pre_by_mlp: dict[str, Tensor] = {}

    def remember(pre: Tensor, hook) -> None:
        pre_by_mlp[hook.name.rsplit(".", 1)[0]] = pre

    def freeze_gate(post: Tensor, hook) -> Tensor:
        pre = pre_by_mlp.pop(hook.name.rsplit(".", 1)[0])
        # (pre - pre.detach()) is exactly zero, so the forward value stays `post` bit for bit.
        return post.detach() + (pre - pre.detach()) * gate(pre).detach()

    hooks = [(name, remember) for name in _hooks_named(model, ("mlp.hook_pre",))]
    return hooks + [(name, freeze_gate) for name in _hooks_named(model, ("mlp.hook_post",))]


def linearisation_hooks(model: nn.Module, config: Linearisation) -> list[tuple[str, Callable]]:
    """Host forward hooks that make the chosen quantities constants in the backward pass."""
    hooks: list[tuple[str, Callable]] = []
    if config.attention_pattern:
        hooks += [(n, _detach_hook) for n in _hooks_named(model, ("attn.hook_pattern",))]
    if config.layer_norm_scale:
        hooks += [(n, _detach_hook) for n in _hooks_named(model, ("hook_scale",))]
    if config.gelu_gate:
        hooks += _gate_hooks(model)
    return hooks


def check_sae_normalisation(sae: SAE) -> None:
    mode = sae.cfg.normalize_activations
    if mode not in ("layer_norm", "none"):
        raise RRMUserError(
            f"SAE at {sae.cfg.metadata.hook_name!r} uses normalize_activations={mode!r}; "
            "attribution supports 'layer_norm' (the RRM SAEs) and 'none'"
        )


@contextmanager
def _sae_norm(
    sae: SAE,
    *,
    encoder_std: Callable[[Tensor], Tensor],
    decoder_stats: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
) -> Iterator[None]:
    """Swap the SAE's layer-norm functions for ones with the same forward values.

    `encoder_std(std)` gives the std the encoder divides by; `decoder_stats(mu, std)` the mean and
    std the decoder adds back. SAELens stores the normalisation as two instance attributes, so
    this is the one place where the SAE is touched; both are restored on exit.
    """
    check_sae_normalisation(sae)
    if sae.cfg.normalize_activations == "none":
        yield
        return
    saved = sae.run_time_activation_norm_fn_in, sae.run_time_activation_norm_fn_out
    stats: list[tuple[Tensor, Tensor]] = []

    def norm_in(x: Tensor, eps: float = SAE_LN_EPS) -> Tensor:
        mu, std = sae_input_stats(x)
        stats.append(decoder_stats(mu, std))
        return (x - mu) / (encoder_std(std) + eps)

    def norm_out(x: Tensor, eps: float = SAE_LN_EPS) -> Tensor:  # noqa: ARG001 (SAELens signature)
        mu, std = stats.pop()
        return x * std + mu

    sae.run_time_activation_norm_fn_in = norm_in
    sae.run_time_activation_norm_fn_out = norm_out
    try:
        yield
    finally:
        sae.run_time_activation_norm_fn_in, sae.run_time_activation_norm_fn_out = saved


def _detached_stats(mu: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    return mu.detach(), std.detach()


@contextmanager
def linearised(
    model: nn.Module,
    saes: Mapping[str, SAE] | None = None,
    *,
    config: Linearisation = FULL,
) -> Iterator[nn.Module]:
    """Make the chosen quantities constants in the backward pass; forward values are unchanged.

    Args:
        model: A HookedViT (or TransformerLens model); hooks go through its `hooks()` context.
        saes: SAEs whose normalisation to linearise (usually those spliced with `replacement`).
        config: Which quantities to freeze (`NONE` keeps only the latent-only decoders).
    """
    encoder_std = (lambda std: std.detach()) if config.sae_input_std else (lambda std: std)
    with ExitStack() as stack:
        for sae in (saes or {}).values():
            stack.enter_context(
                _sae_norm(sae, encoder_std=encoder_std, decoder_stats=_detached_stats)
            )
        stack.enter_context(model.hooks(fwd_hooks=linearisation_hooks(model, config)))
        yield model


class LinearisationConstants(NamedTuple):
    """Everything the linearised model treats as constant, captured at one input.

    `acts_mask` holds the TopK selections (latents with a positive activation) and `errors` the SAE
    errors, so that with them fixed the spliced model is affine end to end.
    """

    host: dict[str, Tensor]
    """Attention patterns, LayerNorm scales and MLP gates, by host hook name."""
    sae_mean: dict[str, Tensor]
    sae_std: dict[str, Tensor]
    acts_mask: dict[str, Tensor]
    errors: dict[str, Tensor]


@torch.no_grad()
def capture_constants(
    model: nn.Module, saes: Mapping[str, SAE], images: Tensor
) -> LinearisationConstants:
    """Run the spliced model (error kept) once and record its linearisation constants.

    Call inside `splice_saes(model, saes, keep_error=True)`; uses the host cache API.
    """
    gate = activation_gate(activation_name(model))
    host_names = _hooks_named(model, ("attn.hook_pattern", "hook_scale", "mlp.hook_pre"))
    sae_names = [f"{h}.{s}" for h in saes for s in ("hook_sae_input", "hook_sae_acts_post",
                                                     "hook_sae_error")]
    wanted = set(host_names) | set(sae_names)
    _, cache = model.run_with_cache(images, names_filter=lambda n: n in wanted)
    host = {}
    for name in host_names:
        value = cache[name]
        if name.endswith("mlp.hook_pre"):
            host[name.replace("hook_pre", "hook_post")] = gate(value)
        else:
            host[name] = value
    sae_mean, sae_std = {}, {}
    for h in saes:
        sae_mean[h], sae_std[h] = sae_input_stats(cache[f"{h}.hook_sae_input"])
    return LinearisationConstants(
        host=host,
        sae_mean=sae_mean,
        sae_std=sae_std,
        acts_mask={h: cache[f"{h}.hook_sae_acts_post"] > 0 for h in saes},
        errors={h: cache[f"{h}.hook_sae_error"] for h in saes},
    )


def _frozen_host_hooks(constants: LinearisationConstants) -> list[tuple[str, Callable]]:
    hooks: list[tuple[str, Callable]] = []
    pre_by_mlp: dict[str, Tensor] = {}

    def remember(pre: Tensor, hook) -> None:
        pre_by_mlp[hook.name.rsplit(".", 1)[0]] = pre

    def constant(value: Tensor) -> Callable:
        return lambda tensor, hook: value

    def gated(gate: Tensor) -> Callable:
        return lambda post, hook: pre_by_mlp.pop(hook.name.rsplit(".", 1)[0]) * gate

    for name, value in constants.host.items():
        if name.endswith("mlp.hook_post"):
            hooks.append((name.replace("hook_post", "hook_pre"), remember))
            hooks.append((name, gated(value)))
        else:
            hooks.append((name, constant(value)))
    return hooks


def _frozen_sae_hooks(constants: LinearisationConstants) -> list[tuple[str, Callable]]:
    hooks: list[tuple[str, Callable]] = []
    pre: dict[str, Tensor] = {}

    def remember(acts_pre: Tensor, hook) -> None:
        pre[hook.name] = acts_pre

    def selected(hook_name: str) -> Callable:
        # TopK with its selection fixed: z = mask * pre, linear in the pre-activation.
        def hook(acts: Tensor, hook) -> Tensor:
            return pre.pop(f"{hook_name}.hook_sae_acts_pre") * constants.acts_mask[hook_name]

        return hook

    for h in constants.acts_mask:
        hooks.append((f"{h}.hook_sae_acts_pre", remember))
        hooks.append((f"{h}.hook_sae_acts_post", selected(h)))
        hooks.append((f"{h}.hook_sae_error", lambda e, hook, v=constants.errors[h]: v))
    return hooks


@contextmanager
def frozen(
    model: nn.Module, saes: Mapping[str, SAE], constants: LinearisationConstants
) -> Iterator[nn.Module]:
    """The spliced model with all linearisation constants fixed: exactly affine in its streams.

    Call inside `splice_saes(model, saes, keep_error=True)`. At the input where `constants` were
    captured it reproduces that forward pass; elsewhere it is the affine model whose gradient the
    linearised backward pass computes.
    """
    with ExitStack() as stack:
        for h, sae in saes.items():
            stack.enter_context(_sae_norm(
                sae,
                encoder_std=lambda std, v=constants.sae_std[h]: v,
                decoder_stats=lambda mu, std, m=constants.sae_mean[h], s=constants.sae_std[h]: (
                    m, s),
            ))
        hooks = _frozen_host_hooks(constants) + _frozen_sae_hooks(constants)
        stack.enter_context(model.hooks(fwd_hooks=hooks))
        yield model
