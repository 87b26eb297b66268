"""The feature types' null: random latents read through the SAE's own encoder.

Like for like means a random latent goes through everything a real feature goes through, so that
only its direction is random. A real feature's activation is the SAE's `encode`: the input's
per-token standardisation (`layer_norm` SAEs), the `b_dec` centring, its encoder column and bias,
and, in a TopK SAE, the competition with the other latents (it is zeroed unless among the k
largest). The null therefore takes a copy of the SAE, overwrites a few of its latents with random
unit directions (encoder column and decoder row; the encoder column keeps the norm, and the
latent its bias, of the latent it replaces, so its pre-activations have a real latent's scale)
and reads them with the copy's own `encode`. A random latent fires only where it wins a place
among the k, against the trained latents a real feature competes with.

Why inserted into the real SAE and not a whole random SAE of the same shape and k: in a random
SAE the k winners are chosen among random latents only, a competition no real feature faces (a
trained latent loses its token to the latents trained for that token). Only `d_sae // 16` latents
(at least 1) are replaced per copy, so the competition a random latent meets is that of at least
15/16 real latents; copies are drawn until `n_random` random latents are read.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor

from rrm_plugin.errors import RRMUserError


@torch.no_grad()
def sae_with_random_latents(
    sae: SAE, *, directions: Float[Tensor, "d_in m"], slots: Int[Tensor, " m"]
) -> SAE:
    """A copy of `sae` whose latents `slots` are random latents along `directions`.

    Args:
        sae: The real SAE (left unchanged).
        directions: Unit columns, one per inserted latent.
        slots: Distinct latent indices the directions replace.
    """
    if directions.ndim != 2 or directions.shape[0] != sae.cfg.d_in:
        raise RRMUserError(f"directions must be [d_in={sae.cfg.d_in}, m], got "
                         f"{tuple(directions.shape)}")
    if slots.shape != (directions.shape[1],) or len(set(slots.tolist())) != len(slots) or (
            slots.numel() and not 0 <= int(slots.min()) <= int(slots.max()) < sae.cfg.d_sae):
        raise RRMUserError(f"slots must be {directions.shape[1]} distinct latent indices in "
                         f"[0, {sae.cfg.d_sae}), got {slots.tolist()}")
    work = copy.deepcopy(sae)
    d = directions.to(work.W_enc.device, work.W_enc.dtype)
    work.W_enc[:, slots] = d * sae.W_enc[:, slots].norm(dim=0)
    work.W_dec[slots] = d.T
    return work


@torch.no_grad()
def read_latents(sae: SAE, x: Float[Tensor, "... d_in"], slots: Tensor) -> Tensor:
    """Activations of latents `slots`, by the SAE's own `encode` (float, on the CPU)."""
    return sae.encode(x.to(sae.device, sae.dtype))[..., slots].float().cpu()


def random_latent_activations(
    sae: SAE, inputs: Mapping[str, Tensor], *, n_random: int, generator: torch.Generator,
) -> dict[str, Float[Tensor, "n tokens n_random"]]:
    """Per input set, the activations of `n_random` random latents inserted `d_sae // 16` at a
    time (module docstring), directions uniform on the sphere, slots drawn without replacement."""
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    per_copy = max(1, d_sae // 16)
    parts: dict[str, list[Tensor]] = {name: [] for name in inputs}
    for start in range(0, n_random, per_copy):
        m = min(per_copy, n_random - start)
        directions = torch.randn(d_in, m, generator=generator, dtype=torch.float64)
        directions = (directions / directions.norm(dim=0, keepdim=True)).float()
        slots = torch.randperm(d_sae, generator=generator)[:m]
        work = sae_with_random_latents(sae, directions=directions, slots=slots)
        for name, x in inputs.items():
            parts[name].append(read_latents(work, x, slots))
    return {name: torch.cat(p, dim=-1) for name, p in parts.items()}
