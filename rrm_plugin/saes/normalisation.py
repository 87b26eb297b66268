"""Per-token standardisation of SAE inputs, SAELens's `normalize_activations="layer_norm"`.

`x_n = (x - mu) / (s + eps)` with the per-token mean `mu` and unbiased std `s` of the centred
input (`SAE.run_time_activation_norm_fn_in`); the decoder maps back with `s x_hat_n + mu`. This is
the one place the package writes it: SAE training, the linearised backward pass and the
attribution traces use these functions (`tests/saes/test_normalisation.py` checks them against
SAELens).
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

SAE_LN_EPS = 1e-5
"""The epsilon of SAELens's `run_time_activation_ln_in`."""


def input_stats(
    x: Float[Tensor, "... d_in"],
) -> tuple[Float[Tensor, "... 1"], Float[Tensor, "... 1"]]:
    """Per-token mean and unbiased std of `x`, with the same operations as SAELens."""
    mu = x.mean(dim=-1, keepdim=True)
    return mu, (x - mu).std(dim=-1, keepdim=True)


def standardise(
    x: Float[Tensor, "... d_in"],
) -> tuple[Float[Tensor, "... d_in"], Float[Tensor, "... 1"], Float[Tensor, "... 1"]]:
    """`(x_n, mu, s)`: the standardised input and its per-token statistics."""
    mu, std = input_stats(x)
    return (x - mu) / (std + SAE_LN_EPS), mu, std
