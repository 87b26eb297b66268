import torch

from rrm_plugin.saes.training import (
    TopKTrainingConfig,
    _aux_loss,
    new_topk_sae,
    standardise,
    train_topk_sae,
)


def _manual_topk(sae, x):
    """docs/method.md §1, written out: standardise, TopK(ReLU((x_n - b_dec) W_enc)), decode."""
    mu = x.mean(-1, keepdim=True)
    s = (x - mu).std(-1, keepdim=True)
    x_n = (x - mu) / (s + 1e-5)
    pre = (x_n - sae.b_dec) @ sae.W_enc
    vals, idx = pre.relu().topk(sae.cfg.k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals)
    return z, s * (z @ sae.W_dec + sae.b_dec) + mu


def test_saelens_topk_sae_is_exactly_the_papers_sae():
    sae = new_topk_sae(d_in=12, d_sae=40, k=5, hook_name="h", model_name="m", seed=1)
    with torch.no_grad():
        sae.b_dec.normal_()
        x = torch.randn(50, 12) * 3 + 1
        z_ref, x_hat_ref = _manual_topk(sae, x)
        z = sae.encode(x)
        x_hat = sae.decode(z)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_hat, x_hat_ref, rtol=1e-5, atol=1e-5)
    assert sae.cfg.normalize_activations == "layer_norm" and sae.cfg.apply_b_dec_to_input
    assert torch.equal(sae.b_enc, torch.zeros(40))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(40))


def test_standardise_matches_definition():
    x = torch.randn(7, 9) * 5 + 2
    x_n, mu, s = standardise(x)
    torch.testing.assert_close(mu, x.mean(-1, keepdim=True))
    torch.testing.assert_close(s, x.std(-1, keepdim=True))
    torch.testing.assert_close(x_n * (s + 1e-5) + mu, x)


def test_training_recovers_a_planted_sparse_code():
    torch.manual_seed(0)
    d_in, n_atoms, k = 16, 24, 3
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d_in), dim=-1)
    codes = torch.zeros(20_000, n_atoms)
    idx = torch.rand(20_000, n_atoms).topk(k, dim=-1).indices
    codes.scatter_(1, idx, torch.rand(20_000, k) + 0.5)
    x = codes @ atoms
    cfg = TopKTrainingConfig(d_sae=48, k=k, n_steps=600, batch_size=1024, lr=3e-3,
                             dead_after_tokens=50_000)
    sae, log = train_topk_sae(x, cfg=cfg, hook_name="h", model_name="m", progress=False)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    explained = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert explained > 0.9, explained
    assert log.mse[-1] < 0.3 * log.mse[0]
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(48))
    assert torch.equal(sae.b_enc, torch.zeros(48))


def test_aux_loss_only_uses_dead_latents():
    pre = torch.randn(8, 10)
    residual = torch.randn(8, 4)
    w_dec = torch.randn(10, 4)
    none_dead = torch.zeros(10, dtype=torch.bool)
    assert _aux_loss(pre, residual, none_dead, w_dec, 4).item() == 0.0
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[2, 5]] = True
    loss = _aux_loss(pre, residual, dead, w_dec, 4)
    z = torch.zeros_like(pre)
    z[:, [2, 5]] = pre[:, [2, 5]].relu()
    expected = (z @ w_dec - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
