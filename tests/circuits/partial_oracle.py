"""Independent reference for running partial circuits (docs/method.md §5), sharing no code with
rrm_plugin: the SAE maths is written out here and applied by plain host hooks on the residual
stream (`blocks.{l}.hook_resid_post`), without the replacement hook mode.

At a masked SAE layer the incoming stream `x` (already changed by the layers below) is encoded,
`z = TopK(ReLU(((x - mu) / (s + eps) - b_dec) W_enc + b_enc))`; latents kept at their value keep
`z`, the others take their per-position baseline; the layer's error is the clean run's error
`e = x_clean - x_hat(x_clean)` when kept, else its baseline; the stream becomes
`s (z' W_dec + b_dec) + mu + e'`. Insertion keeps the circuit, deletion keeps its complement.
Layers without a mask are left alone (they are exact when their error is kept).

Also the fixtures of the partial-circuit tests: a 4-block sharp ViT with SAEs on three block
outputs (non-zero decoder and encoder biases), float64 so that the two paths agree to 1e-9.
"""

from __future__ import annotations

from functools import partial

import torch

EPS = 1e-5  # SAELens's layer-norm standardisation epsilon
HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in range(3)]


def check_topk_layer_norm(sae) -> None:
    """The oracle knows one SAE architecture; refuse any other rather than be silently wrong."""
    cfg = sae.cfg
    assert cfg.normalize_activations == "layer_norm" and cfg.apply_b_dec_to_input, cfg
    assert type(sae).__name__ == "TopKSAE" and not getattr(cfg, "rescale_acts_by_decoder_norm",
                                                           False)


def encode(sae, x):
    """`(z, mu, s)` of the stream `x` `[..., d_model]`."""
    check_topk_layer_norm(sae)
    mu = x.mean(-1, keepdim=True)
    s = (x - mu).std(-1, keepdim=True)  # unbiased, as SAELens
    pre = ((x - mu) / (s + EPS) - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, index = pre.topk(sae.cfg.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, index, values.clamp(min=0)), mu, s


def decode(sae, z, mu, s):
    return (z @ sae.W_dec + sae.b_dec) * s + mu


@torch.no_grad()
def clean_error(model, saes, images):
    """`{hook: [batch, pos, d_model]}` errors of the clean model's own streams."""
    _, cache = model.run_with_cache(images, names_filter=lambda n: n in saes)
    return {h: cache[h] - decode(sae, *encode(sae, cache[h])) for h, sae in saes.items()}


@torch.no_grad()
def oracle_logits(model, saes, images, *, latents, errors, mode, base_z, base_e):
    """Logits with the circuit kept (`insertion`) or removed (`deletion`).

    Args:
        latents: `{hook: [batch, pos, d_sae] bool}` circuit latents of the masked layers.
        errors: `{hook: [batch] bool}` whether the layer's error node is in the circuit.
        base_z / base_e: `{hook: [pos, d_sae]}` / `{hook: [pos, d_model]}` baselines.
    """
    assert mode in ("insertion", "deletion")
    true_e = clean_error(model, {h: saes[h] for h in latents}, images)

    def hook(x, hook, h):
        sae = saes[h]
        keep = latents[h] if mode == "insertion" else ~latents[h]
        keep_e = errors[h] if mode == "insertion" else ~errors[h]
        z, mu, s = encode(sae, x)
        z = torch.where(keep, z, base_z[h])
        e = torch.where(keep_e[:, None, None], true_e[h], base_e[h])
        return decode(sae, z, mu, s) + e

    return model.run_with_hooks(images, fwd_hooks=[(h, partial(hook, h=h)) for h in latents])


def partial_setup(n_images: int = 4):
    """`(model, saes, baselines, images)`: float64, three SAE layers, non-zero biases, and latent
    baselines moved off zero (a latent set to its baseline must differ from a zeroed one)."""
    from rrm_plugin.attribution.baselines import Baselines, compute_baselines
    from rrm_plugin.zoo.models import to_device
    from tests.attribution.conftest import random_saes, sharp_vit

    f64 = torch.float64
    model = to_device(sharp_vit(n_layers=4), dtype="float64")
    saes = {h: s.to(f64) for h, s in random_saes(model, layers=range(3)).items()}
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for sae in saes.values():
            sae.b_dec.copy_(torch.randn(sae.cfg.d_in, generator=g, dtype=f64) * 0.3)
            sae.b_enc.copy_(torch.randn(sae.cfg.d_sae, generator=g, dtype=f64) * 0.1)
    reference = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=f64)
    mean = compute_baselines(model, saes, reference, statistic="mean", progress=False)
    features = {h: f + 0.25 * torch.rand(f.shape, generator=g, dtype=f64)
                for h, f in mean.features.items()}
    baselines = Baselines(mean.statistic, features, mean.errors, mean.resid, mean.fingerprints,
                          mean.n_images, mean.model_fingerprint)
    images = torch.rand(n_images, 3, 8, 8, generator=torch.Generator().manual_seed(7), dtype=f64)
    return model, saes, baselines, images
