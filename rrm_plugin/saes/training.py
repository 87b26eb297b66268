"""TopK SAE training on residual-stream activations (docs/method.md section 1).

The trained module is a SAELens `TopKSAE` with `normalize_activations="layer_norm"`,
`apply_b_dec_to_input=True` and a frozen zero `b_enc`, so SAELens runs it unchanged. We train it
with our own loop because the objective is defined on the standardised input: MSE between `x_n`
and `z W_dec + b_dec`, plus the TopK auxiliary loss on dead latents, with unit-norm decoder rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Float
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from torch import Tensor
from tqdm.auto import tqdm

from rrm_plugin.errors import RRMUserError
from rrm_plugin.saes.normalisation import standardise


@dataclass(frozen=True)
class TopKTrainingConfig:
    """Hyper-parameters of one TopK SAE.

    Args:
        d_sae: Number of latents.
        k: Latents kept per token.
        n_steps: Optimiser steps.
        batch_size: Tokens per step.
        lr: Adam learning rate (paper: 2e-4).
        aux_k: Dead latents used by the auxiliary loss (capped at d_sae // 2).
        aux_coefficient: Weight of the auxiliary loss (paper: 1/32).
        dead_after_tokens: A latent that has not fired for this many tokens counts as dead.
        seed: Seed for initialisation and batch order.
    """

    d_sae: int
    k: int
    n_steps: int = 3000
    batch_size: int = 4096
    lr: float = 2e-4
    aux_k: int = 256
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 1_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_sae", "k", "n_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise RRMUserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.k > self.d_sae:  # TopK cannot keep more latents than there are
            raise RRMUserError(f"k ({self.k}) must be at most d_sae ({self.d_sae})")


class TrainingLog(NamedTuple):
    mse: list[float]
    aux: list[float]
    dead_fraction: list[float]


def new_topk_sae(
    *, d_in: int, d_sae: int, k: int, hook_name: str, model_name: str, seed: int = 0
) -> TopKSAE:
    """A SAELens `TopKSAE` set up as in the RRM paper, decoder rows unit norm, `W_enc = W_dec^T`."""
    cfg = TopKSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        normalize_activations="layer_norm",
        apply_b_dec_to_input=True,
        metadata=SAEMetadata(model_name=model_name, hook_name=hook_name, hook_head_index=None),
    )
    generator = torch.Generator().manual_seed(seed)
    sae = TopKSAE(cfg)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.b_enc.requires_grad_(False)  # the paper's SAEs have no encoder bias
    return sae


def _aux_loss(
    pre: Float[Tensor, "batch d_sae"],
    residual: Float[Tensor, "batch d_in"],
    dead: Tensor,
    w_dec: Float[Tensor, "d_sae d_in"],
    aux_k: int,
) -> Tensor:
    """Reconstruct the main reconstruction's residual from the top `aux_k` dead latents."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k_aux = min(aux_k, n_dead)
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = masked.topk(k_aux, dim=-1)
    z_aux = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    recon = z_aux @ w_dec
    # Normalised by the residual's variance so the coefficient is scale free (as in OpenAI's TopK).
    return (recon - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean().clamp_min(1e-8)


def train_topk_sae(
    activations: Float[Tensor, "n_tokens d_in"],
    *,
    cfg: TopKTrainingConfig,
    hook_name: str,
    model_name: str,
    progress: bool = True,
) -> tuple[TopKSAE, TrainingLog]:
    """Train one TopK SAE on a buffer of activations (all tokens, shuffled each epoch)."""
    if activations.ndim != 2:
        raise RRMUserError(f"activations must be [n_tokens, d_in], got {list(activations.shape)}")
    if not torch.isfinite(activations).all():
        raise RRMUserError("activations contain NaN/inf; expected finite values")
    d_in = activations.shape[1]
    torch.manual_seed(cfg.seed)
    sae = new_topk_sae(
        d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, hook_name=hook_name, model_name=model_name,
        seed=cfg.seed,
    )
    x_n_all, _, _ = standardise(activations)
    with torch.no_grad():
        sae.b_dec.copy_(x_n_all.median(dim=0).values)
    params = [sae.W_enc, sae.W_dec, sae.b_dec]
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    aux_k = min(cfg.aux_k, cfg.d_sae // 2)
    log = TrainingLog([], [], [])
    order = torch.randperm(len(x_n_all), generator=generator)
    cursor = 0
    bar = tqdm(range(cfg.n_steps), desc=f"SAE {hook_name}", disable=not progress, leave=False)
    for _ in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(x_n_all), generator=generator), 0
        x_n = x_n_all[order[cursor : cursor + cfg.batch_size]]
        cursor += cfg.batch_size

        pre = (x_n - sae.b_dec) @ sae.W_enc
        values, indices = pre.topk(cfg.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, indices, values.relu())
        recon = z @ sae.W_dec + sae.b_dec
        mse = (recon - x_n).pow(2).sum(-1).mean()
        dead = tokens_since_fired >= cfg.dead_after_tokens
        aux = _aux_loss(pre, (x_n - recon).detach(), dead, sae.W_dec, aux_k)
        loss = mse + cfg.aux_coefficient * aux

        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            # Keep decoder rows on the unit sphere: drop the gradient along each row ...
            w, g = sae.W_dec, sae.W_dec.grad
            g -= (g * w).sum(-1, keepdim=True) * w
        optimiser.step()
        with torch.no_grad():
            # ... and renormalise after the step.
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
            fired[indices[values > 0].unique()] = True
            tokens_since_fired += len(x_n)
            tokens_since_fired[fired] = 0
        log.mse.append(mse.item())
        log.aux.append(aux.item())
        log.dead_fraction.append(dead.float().mean().item())
        bar.set_postfix(mse=f"{log.mse[-1]:.4f}", dead=f"{log.dead_fraction[-1]:.2%}")
    sae.eval()
    return sae, log
