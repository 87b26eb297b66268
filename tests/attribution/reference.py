"""Independent reference attribution graph (the authors' way), for the engine tests and benchmark.

Written after the structure of `rubato-yeong/RRM`
(`compute_node_and_edge_with_leaf_error_attributions`):
the top layer's scores come from one backward pass of the linearised model; for every lower layer
`torch.func.jacrev` (no chunking) differentiates `sum_t ghat_{l+1}[t] * z_{l+1}[t](x_l)` through
block l+1, the standardisation (std detached) and the TopK (or ReLU) encoder, with latents
outside an SAE's `seqpos_slice` zeroed, over the *whole* residual
stream, materialising `J = [d_sae_out, T, D]` and then `J W_dec^T = [d_sae_out, T, d_sae_in]`.

It is an oracle, so it shares no code with what it checks: the linearisation (frozen attention
pattern, LayerNorm scale and MLP gate, with the gates written from their formulas), the SAE
encoder, the metric and the layer ordering are written here again, and the package is used only
for the host model, the SAE weights and the `Baselines` container.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines

SAE_EPS = 1e-5  # SAELens's `run_time_activation_ln_in` default


def _sigmoid(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-x))


# gate(x) = act(x) / x, from each activation's formula.
GATES: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": lambda x: 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),  # x Phi(x)
    "gelu_new": lambda x: 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                                  * (x + 0.044715 * x**3))),
    "relu": lambda x: (x > 0).to(x.dtype),
    "silu": _sigmoid,  # x sigmoid(x)
    "quick_gelu": lambda x: _sigmoid(1.702 * x),  # x sigmoid(1.702 x)
}
GATES["gelu_fast"] = GATES["gelu_pytorch_tanh"] = GATES["gelu_new"]


def _gate(model: nn.Module) -> Callable[[Tensor], Tensor]:
    cfg = model.cfg
    return GATES[getattr(cfg, "activation_name", None) or cfg.act_fn]


@contextmanager
def frozen_backward(model: nn.Module) -> Iterator[None]:
    """Attention patterns, LayerNorm scales and MLP gates as constants in the backward pass.

    The MLP output becomes `pre * gate(pre).detach()`: its forward value is the activation
    recomputed from the formula, its derivative the frozen gate.
    """
    gate = _gate(model)
    pre: dict[str, Tensor] = {}

    def constant(tensor: Tensor, hook) -> Tensor:
        return tensor.detach()

    def remember(tensor: Tensor, hook) -> None:
        pre[hook.name.removesuffix("hook_pre")] = tensor

    def gated(tensor: Tensor, hook) -> Tensor:
        x = pre.pop(hook.name.removesuffix("hook_post"))
        return x * gate(x).detach()

    hooks = []
    for name in model.hook_dict:
        if name.endswith(("attn.hook_pattern", "hook_scale")):
            hooks.append((name, constant))
        elif name.endswith("mlp.hook_pre"):
            hooks.append((name, remember))
        elif name.endswith("mlp.hook_post"):
            hooks.append((name, gated))
    with model.hooks(fwd_hooks=hooks):
        yield


def _metric(logits: Tensor, cls: int, metric: str) -> Tensor:
    if metric == "logit":
        return logits[0, cls]
    if metric == "adjusted_logit":
        return logits[0, cls] - logits[0].mean()
    raise ValueError(metric)


def _layers(saes: Mapping[str, SAE]) -> list[tuple[int, str]]:
    """`(block, hook)` bottom to top, from `blocks.<l>.hook_resid_post`."""
    return sorted((int(h.split(".")[1]), h) for h in saes)


class ReferenceGraph(NamedTuple):
    node_scores: dict[int, Float[Tensor, "pos d_sae"]]
    """Per-token node scores by SAE layer index (0 = lowest SAE)."""
    error_scores: dict[int, float]
    edges: dict[int, Float[Tensor, "d_src_plus_error d_tgt"]]
    """Dense edges from SAE layer k (rows, last = error) to layer k+1 (columns)."""
    grads: dict[int, Float[Tensor, "pos d_sae"]]
    """ghat of each layer."""


def _latents(sae: SAE, x: Tensor, *, detach_std: bool) -> tuple[Tensor, Tensor, Tensor]:
    """z, std and mean of a TopK or ReLU SAE with layer-norm or no normalisation, written out.

    `x` is `[T, D]`. Latents outside the SAE's `seqpos_slice` are zero (class-token SAEs).
    """
    if sae.cfg.normalize_activations == "layer_norm":
        mu, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
        std = std.detach() if detach_std else std
        x_n = (x - mu) / (std + SAE_EPS)
    else:
        mu, std = torch.zeros_like(x[:, :1]), torch.ones_like(x[:, :1])
        x_n = x
    acts = F.relu((x_n - sae.b_dec) @ sae.W_enc + sae.b_enc)
    k = getattr(sae.cfg, "k", None)
    if k is not None:
        top = torch.topk(acts, k, dim=-1)
        acts = torch.zeros_like(acts).scatter(-1, top.indices, top.values)
    seqpos = sae.cfg.metadata.seqpos_slice
    if seqpos is not None:
        covered = torch.zeros(x.shape[0], 1, dtype=acts.dtype, device=acts.device)
        covered[slice(*seqpos)] = 1
        acts = acts * covered
    return acts, std, mu


def _sae_forward(sae: SAE, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """z, std and error of one layer."""
    z, std, mu = _latents(sae, x, detach_std=False)
    x_hat = (z @ sae.W_dec + sae.b_dec) * std + mu
    return z, std, x - x_hat


def _jacobian(model: nn.Module, block: int, sae: SAE, ghat: Tensor, x: Tensor) -> Tensor:
    def layer_fn(x: Tensor) -> Tensor:
        y = model.blocks[block](x)[0]
        acts, _, _ = _latents(sae, y, detach_std=True)
        return (acts * ghat).sum(dim=0)

    with torch.enable_grad():
        return torch.func.jacrev(layer_fn, chunk_size=None)(x[None])[:, 0].detach()  # [F_out,T,D]


def _forward_state(
    model: nn.Module, saes: Mapping[str, SAE], image: Tensor, baselines: Baselines,
    target_class: int | None, metric: str,
) -> tuple[dict[int, Tensor], dict[int, tuple[Tensor, ...]], Tensor]:
    """Residual streams, `(z, std, err, dz, de)` per SAE layer, and the metric's gradient at
    the top layer (through the frozen backward pass)."""
    layers = _layers(saes)
    top = len(layers) - 1
    xs: dict[int, Tensor] = {}
    hooks = [(h, lambda t, hook, k=k: xs.__setitem__(k, t)) for k, (_, h) in enumerate(layers)]
    with frozen_backward(model), model.hooks(fwd_hooks=hooks), torch.enable_grad():
        logits = model(image.detach().requires_grad_(True))
        cls = int(logits[0].argmax()) if target_class is None else target_class
        value = _metric(logits, cls, metric)
        g_top = torch.autograd.grad(value, xs[top])[0][0]
    x = {k: v.detach()[0] for k, v in xs.items()}
    state = {}
    for k, (_, h) in enumerate(layers):
        with torch.no_grad():
            z, std, err = _sae_forward(saes[h], x[k])
        z, std, err = z.detach(), std.detach(), err.detach()
        state[k] = (z, std, err, z - baselines.features[h], err - baselines.errors[h])
    return x, state, g_top.detach()


def reference_graph(
    model: nn.Module,
    saes: Mapping[str, SAE],
    image: Float[Tensor, "1 c h w"],
    *,
    baselines: Baselines,
    target_class: int | None = None,
    metric: str = "adjusted_logit",
    pairs: Sequence[int] | None = None,
    upper_grads: Mapping[int, Tensor] | None = None,
) -> ReferenceGraph:
    """Node scores, error scores and dense edges of one image, via jacrev per layer pair.

    Args:
        pairs: Source-layer indices k of the pairs (k -> k+1) to compute (default: all). With a
            subset, `upper_grads[k+1]` must give ghat of each pair's upper layer.
        upper_grads: ghat by SAE layer index, to start the chain below the top.
    """
    layers = _layers(saes)
    top = len(layers) - 1
    x, state, g_top = _forward_state(model, saes, image, baselines, target_class, metric)

    nodes, errors, edges, grads = {}, {}, {}, dict(upper_grads or {})
    sae_top = saes[layers[top][1]]
    z, std, err, dz, de = state[top]
    g_top = g_top.detach()
    if top not in grads:
        grads[top] = std * (g_top @ sae_top.W_dec.detach().T)
    nodes[top] = grads[top] * dz
    errors[top] = float((g_top * de).sum())

    wanted = range(top - 1, -1, -1) if pairs is None else sorted(pairs, reverse=True)
    with frozen_backward(model), torch.no_grad():
        for k in wanted:
            block, h_src = layers[k + 1][0], layers[k][1]
            if k + 1 not in grads:
                raise ValueError(f"pair {k}->{k + 1} needs ghat of layer {k + 1} (upper_grads)")
            J = _jacobian(model, block, saes[layers[k + 1][1]], grads[k + 1], x[k])
            z, std, err, dz, de = state[k]
            r_err = torch.einsum("otd,td->o", J, de)
            edge = (J @ saes[h_src].W_dec.detach().T) * std[None]  # [F_out, T, F_in]
            grads[k] = edge.sum(0)
            nodes[k] = grads[k] * dz
            errors[k] = float(r_err.sum())
            edges[k] = torch.cat([torch.einsum("oti,ti->io", edge, dz), r_err[None]], dim=0)
    return ReferenceGraph(nodes, errors, edges, grads)


def reference_token_edges(
    model: nn.Module,
    saes: Mapping[str, SAE],
    image: Float[Tensor, "1 c h w"],
    *,
    baselines: Baselines,
    target_class: int | None = None,
    metric: str = "adjusted_logit",
) -> dict[int, Float[Tensor, "pos_d_src_plus_error pos_d_tgt"]]:
    """Dense token-level edges of every pair k -> k+1: rows `t * d_src + i` (last: the error
    node), columns `t' * d_tgt + o`; one jacrev per pair of `ghat[t', o] z[t', o]` *without*
    summing over t', so every (t', o) keeps its own Jacobian `[T, D]` (tiny models only)."""
    layers = _layers(saes)
    x, state, _ = _forward_state(model, saes, image, baselines, target_class, metric)
    grads = reference_graph(model, saes, image, baselines=baselines, target_class=target_class,
                            metric=metric).grads
    out = {}
    with frozen_backward(model), torch.no_grad():
        for k in range(len(layers) - 1):
            block, sae_tgt = layers[k + 1][0], saes[layers[k + 1][1]]

            def per_target(x_in: Tensor, block=block, sae=sae_tgt, ghat=grads[k + 1]) -> Tensor:
                acts, _, _ = _latents(sae, model.blocks[block](x_in)[0], detach_std=True)
                return acts * ghat  # [T', F_out]

            with torch.enable_grad():
                J = torch.func.jacrev(per_target)(x[k][None])[:, :, 0].detach()  # [T',F,T,D]
            _, std, _, dz, de = state[k]
            W_dec = saes[layers[k][1]].W_dec.detach()
            latent = torch.einsum("aotd,id->tiao", J, W_dec) * (std * dz)[:, :, None, None]
            error = torch.einsum("aotd,td->ao", J, de)
            out[k] = torch.cat([latent.flatten(2).flatten(0, 1), error.flatten()[None]], dim=0)
    return out
