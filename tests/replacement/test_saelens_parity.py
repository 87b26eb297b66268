"""Parity of our splice with SAELens's own `HookedSAETransformer.run_with_saes`.

A tiny TransformerLens model with random SAELens SAEs: the logits and the cached SAE latents must
agree with SAELens's splice, with the error term kept (`use_error_term=True`) and dropped.
"""

import pytest
import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformerConfig

import rrm_plugin
from rrm_plugin.saes.training import new_topk_sae

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_mlp=32, d_vocab=20,
        act_fn="gelu", normalization_type="LN", seed=0,
    )
    return HookedSAETransformer(cfg).eval()


def _tokens(model, batch, seed):
    return torch.randint(0, model.cfg.d_vocab, (batch, 8),
                         generator=torch.Generator().manual_seed(seed))


def _saes(model, hooks):
    saes = {}
    for i, hook in enumerate(hooks):
        sae = new_topk_sae(d_in=model.cfg.d_model, d_sae=24, k=3, hook_name=hook,
                           model_name="tiny-lm", seed=i)
        with torch.no_grad():  # non-zero biases, so that their handling is compared too
            sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(10 + i))
            sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(20 + i))
        saes[hook] = sae.eval()
    return saes


@pytest.mark.parametrize("keep_error", [True, False])
@pytest.mark.parametrize("hooks", [HOOKS[:1], HOOKS])
def test_splice_matches_saelens_run_with_saes(tiny_lm, keep_error, hooks):
    saes = _saes(tiny_lm, hooks)
    tokens = _tokens(tiny_lm, 3, 1)
    with torch.no_grad():
        ref_logits, ref_cache = tiny_lm.run_with_cache_with_saes(
            tokens, saes=list(saes.values()), use_error_term=keep_error
        )
        with rrm_plugin.splice_saes(tiny_lm, saes, keep_error=keep_error):
            logits, cache = tiny_lm.run_with_cache(tokens)
        clean = tiny_lm(tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for hook in hooks:
        name = f"{hook}.hook_sae_acts_post"
        torch.testing.assert_close(cache[name], ref_cache[name], atol=1e-6, rtol=1e-5)
        assert (cache[name] > 0).any()
    if keep_error:
        torch.testing.assert_close(logits, clean, atol=1e-5, rtol=1e-5)
    else:
        assert (logits - clean).abs().max() > 1e-3  # the random SAEs do change the output
    assert not tiny_lm.acts_to_saes  # SAELens's splice is undone too


def test_saelens_run_with_saes_logits_match(tiny_lm):
    saes = _saes(tiny_lm, HOOKS[:1])
    tokens = _tokens(tiny_lm, 2, 2)
    with torch.no_grad():
        ref = tiny_lm.run_with_saes(tokens, saes=list(saes.values()), use_error_term=False)
        with rrm_plugin.splice_saes(tiny_lm, saes, keep_error=False):
            ours = tiny_lm(tokens)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
