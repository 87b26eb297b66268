"""The engine on the block shapes the default fixture does not exercise, and its refusals.

The tiny ViT's LayerNorm gains are all 1 (only matrices are scaled in `sharp_vit`), so an engine
that ignored a gain would still match the reference there. Here the gains and biases are random,
and the blocks come without an MLP (`attn_only`) or without LayerNorms.
"""

from types import SimpleNamespace

import pytest
import torch

from rrm_plugin.attribution.baselines import compute_baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig, block_weights
from tests.attribution.conftest import random_saes, sharp_vit
from tests.attribution.reference import reference_token_edges
from tests.attribution.test_engine import assert_matches_reference
from tests.attribution.test_token_edges import scattered


def gained_vit(**overrides):
    """`sharp_vit` with random LayerNorm gains (around 1, some negative-free spread) and biases."""
    model = sharp_vit(**overrides)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln" in name or name.startswith("ln"):
                if name.endswith(".w"):
                    param.copy_(1 + 0.5 * torch.randn(param.shape, generator=g))
                elif name.endswith(".b"):
                    param.copy_(0.3 * torch.randn(param.shape, generator=g))
    return model


BLOCKS = {
    "LN with gains": {},
    "attention only": {"attn_only": True},
    "no LayerNorm": {"normalization_type": None},
}


@pytest.fixture(params=list(BLOCKS), scope="module")
def gained(request):
    model = gained_vit(**BLOCKS[request.param])
    saes = random_saes(model, d_sae=24, k=5)
    reference_images = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return model, saes, compute_baselines(model, saes, reference_images, progress=False)


def test_gains_are_not_one():
    gains = [p for n, p in gained_vit().named_parameters() if n.endswith("ln2.w")]
    assert gains and all((p - 1).abs().max() > 0.1 for p in gains)


def test_feature_edges_equal_the_reference(gained, images):
    model, saes, base = gained
    assert_matches_reference(model, saes, images[:1], base)


def test_token_edges_equal_the_per_target_oracle(gained, images):
    model, saes, base = gained
    ref = reference_token_edges(model, saes, images[:1], baselines=base)
    for engine in (EngineConfig(), EngineConfig(chunk_elements=300)):
        graph = attribute(model, saes, images[:1], baselines=base, granularity="token",
                          engine=engine)[0]
        for k in range(len(graph.edges)):
            assert ref[k].abs().max() > 0
            got = scattered(graph, k)
            assert float((got - ref[k]).abs().max()) <= 1e-4 * float(ref[k].abs().max())


def test_block_weights_reads_each_layer_norm_and_mlp():
    model = gained_vit()
    w = block_weights(model, 1)
    blk = model.blocks[1]
    assert torch.equal(w.ln1_w, blk.ln1.w) and torch.equal(w.ln2_w, blk.ln2.w)
    assert w.ln1_centred and w.ln2_centred
    assert torch.equal(w.W_V, blk.attn.W_V) and torch.equal(w.W_O, blk.attn.W_O)
    assert torch.equal(w.W_in, blk.mlp.W_in) and torch.equal(w.W_out, blk.mlp.W_out)
    assert not any(t.requires_grad for t in (w.ln1_w, w.W_V, w.W_O, w.ln2_w, w.W_in, w.W_out))

    pre = block_weights(sharp_vit(normalization_type="LNPre"), 0)
    # LNPre: centring and scaling without a gain (ones).
    assert torch.equal(pre.ln1_w, torch.ones(16)) and pre.ln1_centred and pre.ln2_centred
    none = block_weights(sharp_vit(normalization_type=None), 0)
    assert none.ln1_w is None and none.ln2_w is None
    assert not none.ln1_centred and not none.ln2_centred
    attn = block_weights(sharp_vit(attn_only=True), 0)
    assert attn.W_in is None and attn.W_out is None and attn.ln2_w is None
    assert not attn.ln2_centred and attn.ln1_centred


def _fake_model(**cfg):
    base = dict(n_heads=4, d_model=16, normalization_type="LN")
    return SimpleNamespace(cfg=SimpleNamespace(**{**base, **cfg}), blocks=[SimpleNamespace()])


@pytest.mark.parametrize("cfg, message", [
    (dict(use_bert_block=True), r"models pre-LayerNorm blocks; config sets \['use_bert_block'\]"),
    (dict(parallel_attn_mlp=True),
     r"models pre-LayerNorm blocks; config sets \['parallel_attn_mlp'\]"),
    (dict(use_bert_block=True, parallel_attn_mlp=True),
     r"config sets \['use_bert_block', 'parallel_attn_mlp'\]"),
    (dict(n_key_value_heads=2), "the edge engine does not support grouped-query attention"),
    (dict(normalization_type="RMS"), "supports LN, LNPre or no normalisation, not 'RMS'"),
])
def test_unsupported_blocks_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        block_weights(_fake_model(**cfg), 0)


def test_supported_configs_pass_the_checks():
    # Flags present but false, and key-value heads equal to the heads, are fine: the checks pass
    # and the fake block (no attention) is read.
    for cfg in (dict(use_bert_block=False, parallel_attn_mlp=False), dict(n_key_value_heads=4),
                dict(n_key_value_heads=None), dict(normalization_type="LNPre"),
                dict(normalization_type=None)):
        with pytest.raises(AttributeError, match="attn"):
            block_weights(_fake_model(**cfg), 0)


def test_engine_config_bounds():
    for field in ("images_per_step", "chunk_elements"):
        with pytest.raises(ValueError, match=f"{field} must be >= 1, got 0"):
            EngineConfig(**{field: 0})
    with pytest.raises(ValueError, match="token_top_k must be None or >= 1, got 0"):
        EngineConfig(token_top_k=0)
    one = EngineConfig(images_per_step=1, chunk_elements=1, token_top_k=1)
    assert (one.images_per_step, one.chunk_elements, one.token_top_k) == (1, 1, 1)
    assert EngineConfig() == EngineConfig(chunk_elements=2**24, max_token_edges=50_000_000,
                                          images_per_step=1, token_top_k=None)


def test_token_edge_limits_at_the_boundary():
    from rrm_plugin.attribution.token_engine import _check_token_edges

    # Dense: (sources + error row) x targets entries; 5 x 2 = 10 fits a limit of 10.
    _check_token_edges(4, 2, EngineConfig(max_token_edges=10))
    with pytest.raises(ValueError, match=r"^token-level edge matrix would have 10 entries \(limit "
                                         r"max_token_edges=9\); use feature granularity, keep "
                                         r"each target's strongest edges \(EngineConfig\("
                                         r"token_top_k=\.\.\.\)\) or raise max_token_edges$"):
        _check_token_edges(4, 2, EngineConfig(max_token_edges=9))
    # Top-k: min(k, sources) + 1 slots per target; 3 x 2 = 6 fits 6, whatever the source count.
    _check_token_edges(10**6, 2, EngineConfig(max_token_edges=6, token_top_k=2))
    _check_token_edges(1, 3, EngineConfig(max_token_edges=6, token_top_k=5))
    with pytest.raises(ValueError, match=r"^token-level top-5 edges would store 9 entries \(limit "
                                         r"max_token_edges=8\); lower token_top_k or raise "
                                         r"max_token_edges$"):
        _check_token_edges(2, 3, EngineConfig(max_token_edges=8, token_top_k=5))


def test_config_without_a_normalisation_type_reads_layer_norms():
    """A config that does not name its normalisation is taken as LN (TransformerLens's default):
    a block's LayerNorms are read, and a LayerNorm without a gain has gain 1."""
    gain = torch.arange(16.0)
    attn = SimpleNamespace(W_V=torch.ones(4, 16, 4), W_O=torch.ones(4, 4, 16))
    block = SimpleNamespace(ln1=SimpleNamespace(w=gain), ln2=SimpleNamespace(), attn=attn,
                            mlp=SimpleNamespace(W_in=torch.ones(16, 8), W_out=torch.ones(8, 16)))
    model = SimpleNamespace(cfg=SimpleNamespace(n_heads=4, d_model=16), blocks=[block])
    weights = block_weights(model, 0)
    assert weights.ln1_centred and weights.ln2_centred
    assert torch.equal(weights.ln1_w, gain) and torch.equal(weights.ln2_w, torch.ones(16))
    assert torch.equal(weights.W_in, torch.ones(16, 8))
    # Without an MLP a stray ln2 is not read: nothing in the block uses it.
    model.blocks.append(SimpleNamespace(ln1=block.ln1, ln2=block.ln2, attn=attn))
    no_mlp = block_weights(model, 1)
    assert no_mlp.ln2_w is None and not no_mlp.ln2_centred and no_mlp.W_in is None
