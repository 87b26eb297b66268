"""Our one per-token standardisation is SAELens's `layer_norm` normalisation."""

import inspect

import torch

from rrm_plugin.saes.normalisation import SAE_LN_EPS, input_stats, standardise
from rrm_plugin.saes.training import new_topk_sae


def test_standardise_equals_sae_lens_layer_norm():
    sae = new_topk_sae(d_in=8, d_sae=16, k=2, hook_name="h", model_name="m")
    assert sae.cfg.normalize_activations == "layer_norm"
    x = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(0)) * 4 + 2
    x_n, mu, std = standardise(x)
    assert torch.equal(x_n, sae.run_time_activation_norm_fn_in(x))
    # The decoder side maps back with the same statistics.
    torch.testing.assert_close(sae.run_time_activation_norm_fn_out(x_n), x_n * std + mu)
    torch.testing.assert_close(mu, x.mean(-1, keepdim=True))
    torch.testing.assert_close(std, x.std(-1, keepdim=True))  # unbiased, as SAELens
    assert torch.equal(input_stats(x)[1], std)
    eps = inspect.signature(sae.run_time_activation_norm_fn_in).parameters["eps"].default
    assert eps == SAE_LN_EPS
