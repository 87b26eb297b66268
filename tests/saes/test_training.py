import pytest
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


def _reference_training(x, sae, *, k, lr, aux_k, aux_coefficient, dead_after_tokens, n_steps):
    """docs/method.md section 1, written out for full-batch steps (the batch order then does not
    matter): standardise, b_dec from the coordinate-wise median of x_n, MSE on x_n plus
    `aux_coefficient` x the TopK auxiliary loss (the top `aux_k` dead latents reconstruct the
    residual, normalised by its energy), Adam on W_enc, W_dec, b_dec, decoder gradient projected
    off each row and rows renormalised after the step. A latent is dead once `dead_after_tokens`
    tokens have passed since it last fired (was among the top k with a positive value)."""
    mu = x.mean(-1, keepdim=True)
    s = (x - mu).std(-1, keepdim=True)
    x_n = (x - mu) / (s + 1e-5)
    w_enc = sae.W_enc.detach().clone().requires_grad_(True)
    w_dec = sae.W_dec.detach().clone().requires_grad_(True)
    b_dec = x_n.median(dim=0).values.clone().requires_grad_(True)
    adam = torch.optim.Adam([w_enc, w_dec, b_dec], lr=lr)
    since_fired = torch.zeros(w_dec.shape[0])
    mses, auxes, dead_fracs = [], [], []
    for _ in range(n_steps):
        pre = (x_n - b_dec) @ w_enc
        top = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        recon = z @ w_dec + b_dec
        mse = ((recon - x_n) ** 2).sum(-1).mean()
        dead = since_fired >= dead_after_tokens
        if dead.any():
            residual = (x_n - recon).detach()
            aux_top = pre.masked_fill(~dead, -torch.inf).topk(min(aux_k, int(dead.sum())), -1)
            z_aux = torch.zeros_like(pre).scatter(-1, aux_top.indices, aux_top.values.relu())
            aux = ((z_aux @ w_dec - residual) ** 2).sum(-1).mean() / (residual**2).sum(-1).mean()
        else:
            aux = torch.zeros(())
        adam.zero_grad()
        (mse + aux_coefficient * aux).backward()
        with torch.no_grad():
            w_dec.grad -= (w_dec.grad * w_dec).sum(-1, keepdim=True) * w_dec
        adam.step()
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=-1, keepdim=True)
        fired = torch.zeros_like(dead)
        fired[top.indices[top.values > 0]] = True
        since_fired = torch.where(fired, 0.0, since_fired + len(x))
        mses.append(mse.item())
        auxes.append(aux.item())
        dead_fracs.append(dead.float().mean().item())
    return (w_enc.detach(), w_dec.detach(), b_dec.detach()), (mses, auxes, dead_fracs)


@pytest.mark.parametrize(("n", "d_sae", "k", "aux_k", "aux_k_used"), [
    (24, 12, 2, 4, 4),
    (8, 48, 1, 3, 3),  # more dead latents than aux_k
    (8, 48, 1, 100, 24),  # aux_k capped at d_sae // 2
])
def test_training_steps_match_the_written_out_objective(n, d_sae, k, aux_k, aux_k_used):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g) * 2 + torch.randn(n, 1, generator=g) * 4
    cfg = TopKTrainingConfig(d_sae=d_sae, k=k, n_steps=5, batch_size=n, lr=0.05, aux_k=aux_k,
                             aux_coefficient=0.5, dead_after_tokens=n, seed=5)
    start = new_topk_sae(d_in=6, d_sae=d_sae, k=k, hook_name="h", model_name="m", seed=5)
    # The starting point method.md names: unit decoder rows, W_enc = W_dec^T, no encoder bias.
    torch.testing.assert_close(start.W_dec.norm(dim=-1), torch.ones(d_sae))
    assert torch.equal(start.W_enc, start.W_dec.T) and torch.equal(start.b_enc, torch.zeros(d_sae))
    sae, log = train_topk_sae(x, cfg=cfg, hook_name="h", model_name="m", progress=False)
    (w_enc, w_dec, b_dec), (mses, auxes, dead_fracs) = _reference_training(
        x, start, k=k, lr=0.05, aux_k=aux_k_used, aux_coefficient=0.5, dead_after_tokens=n,
        n_steps=5)
    # Dead latents appear after the first step, so the auxiliary loss takes part.
    assert dead_fracs[0] == 0 and all(0 < d < 1 for d in dead_fracs[1:]) and auxes[1] > 0
    torch.testing.assert_close(log.mse, mses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log.aux, auxes, rtol=1e-5, atol=1e-6)
    assert log.dead_fraction == dead_fracs
    torch.testing.assert_close(sae.W_enc.detach(), w_enc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae.W_dec.detach(), w_dec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae.b_dec.detach(), b_dec, rtol=1e-5, atol=1e-6)
    assert torch.equal(sae.b_enc, torch.zeros(d_sae)) and not sae.training
    assert sae.cfg.metadata.hook_name == "h" and sae.cfg.metadata.model_name == "m"


def test_each_epoch_visits_every_token_once():
    # At lr 0 nothing moves, so each step's MSE is the initial SAE's mean over its batch: batches
    # that partition the tokens (8 + 8 + 8 of 24, twice) average to the MSE over all tokens.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 6, generator=g) * 2 + torch.randn(24, 1, generator=g) * 4
    cfg = TopKTrainingConfig(d_sae=12, k=2, n_steps=6, batch_size=8, lr=0.0, seed=2)
    _, log = train_topk_sae(x, cfg=cfg, hook_name="h", model_name="m", progress=False)
    start = new_topk_sae(d_in=6, d_sae=12, k=2, hook_name="h", model_name="m", seed=2)
    _, (full_mse, _, _) = _reference_training(x, start, k=2, lr=0.0, aux_k=6, aux_coefficient=0,
                                             dead_after_tokens=10**9, n_steps=1)
    for epoch in (log.mse[:3], log.mse[3:]):
        assert max(epoch) - min(epoch) > 1e-3  # the batches differ ...
        assert abs(sum(epoch) / 3 - full_mse[0]) < 1e-5 * full_mse[0]  # ... and partition x


@pytest.mark.parametrize(("bad", "message"), [
    (torch.ones(5), r"^activations must be \[n_tokens, d_in\], got \[5\]$"),
    (torch.ones(2, 3, 4), r"^activations must be \[n_tokens, d_in\], got \[2, 3, 4\]$"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
     r"^activations contain NaN/inf; expected finite values$"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), r"NaN/inf"),
])
def test_bad_activations_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        train_topk_sae(bad, cfg=TopKTrainingConfig(d_sae=4, k=1, n_steps=1, batch_size=2),
                       hook_name="h", model_name="m", progress=False)


def test_progress_bar_by_default_cleared_when_done(capsys):
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    cfg = TopKTrainingConfig(d_sae=8, k=2, n_steps=2, batch_size=8)
    train_topk_sae(x, cfg=cfg, hook_name="blocks.3.hook_resid_post", model_name="m")
    err = capsys.readouterr().err
    assert "SAE blocks.3.hook_resid_post: " in err and "mse=" in err and "dead=0.00%" in err
    assert err.split("\r")[-2].strip() == "" and err.endswith("\r")  # leave=False: erased
    train_topk_sae(x, cfg=cfg, hook_name="h", model_name="m", progress=False)
    assert capsys.readouterr().err == ""


def test_default_hyper_parameters_are_the_papers():
    # The paper's Adam rate and auxiliary loss (docs/method.md section 1: 1/32, k_aux = 256).
    cfg = TopKTrainingConfig(d_sae=1536, k=96)
    assert (cfg.lr, cfg.aux_k, cfg.aux_coefficient) == (2e-4, 256, 1 / 32)
