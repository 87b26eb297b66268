"""Token-level edges: each (token, latent) pair against a per-target jacrev oracle, and the
sparse top-k storage against the dense matrix it cuts."""

import pytest
import torch

from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig
from tests.attribution.reference import reference_token_edges


def scattered(graph, k):
    """Edges of pair k placed at rows `t * d_src + i` (+ error) and columns `t' * d_tgt + o`."""
    src, tgt = graph.layers[k], graph.layers[k + 1]
    n_tok = graph.n_tokens
    rows = torch.cat([src.tokens * src.d_sae + src.features, torch.tensor([n_tok * src.d_sae])])
    cols = tgt.tokens * tgt.d_sae + tgt.features
    edges = graph.edges[k].to_dense() if graph.edges[k].is_sparse else graph.edges[k]
    out = torch.zeros(n_tok * src.d_sae + 1, n_tok * tgt.d_sae)
    out[rows[:, None], cols[None, :]] = edges
    return out


def test_token_edges_equal_the_per_target_jacrev_oracle(vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines, granularity="token",
                      engine=EngineConfig(chunk_elements=300))[0]
    ref = reference_token_edges(vit, saes, images[:1], baselines=baselines,
                                target_class=graph.target_class)
    for k in range(len(graph.edges)):
        expected = ref[k]
        # Same-token (residual path) and cross-token (attention path) entries both matter here.
        n_tok, d_src = graph.n_tokens, graph.layers[k].d_sae
        d_tgt = graph.layers[k + 1].d_sae
        blocks = expected[:-1].view(n_tok, d_src, n_tok, d_tgt).abs().amax((1, 3))
        assert blocks.diagonal().max() > 0 and (blocks - torch.diag(blocks.diagonal())).max() > 0
        got = scattered(graph, k)
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def _dense_and_sparse(vit, saes, images, baselines, top_k, chunk_elements=2**24):
    dense = attribute(vit, saes, images[:1], baselines=baselines, granularity="token")[0]
    sparse = attribute(vit, saes, images[:1], baselines=baselines, granularity="token",
                       engine=EngineConfig(token_top_k=top_k, chunk_elements=chunk_elements))[0]
    return dense, sparse


def test_top_k_at_least_the_source_count_keeps_every_edge(vit, saes, images, baselines):
    dense, sparse = _dense_and_sparse(vit, saes, images, baselines, top_k=10**6)
    for k, edges in enumerate(sparse.edges):
        assert edges.is_sparse
        torch.testing.assert_close(edges.to_dense(), dense.edges[k], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("chunk_elements", [2**24, 50])
def test_top_k_keeps_each_targets_strongest_sources_and_its_error_edge(
        vit, saes, images, baselines, chunk_elements):
    top_k = 3
    dense, sparse = _dense_and_sparse(vit, saes, images, baselines, top_k, chunk_elements)
    for k, edges in enumerate(sparse.edges):
        full = dense.edges[k]
        kept = edges.to_dense()
        n_src = full.shape[0] - 1
        assert n_src > top_k
        for col in range(full.shape[1]):
            column = full[:-1, col]
            order = column.abs().argsort(descending=True)
            # Rows ranked by hand: the 3 strongest latent sources plus the error row.
            want = torch.zeros_like(full[:, col])
            want[order[:top_k]] = column[order[:top_k]]
            want[-1] = full[-1, col]
            # The same float32 products computed for a sparse selection: a few ulps (rtol 1e-6
            # is ~8 ulps; 1 ulp seen).
            torch.testing.assert_close(kept[:, col], want, atol=1e-7, rtol=1e-6)
        assert edges._nnz() <= (top_k + 1) * full.shape[1]


def test_top_k_storage_is_checked_against_max_token_edges(vit, saes, images, baselines):
    with pytest.raises(ValueError, match="top-2 edges would store"):
        attribute(vit, saes, images[:1], baselines=baselines, granularity="token",
                  engine=EngineConfig(token_top_k=2, max_token_edges=10))
    with pytest.raises(ValueError, match="token_top_k must be None or >= 1"):
        EngineConfig(token_top_k=0)


def _pair_setup(vit, saes, images, baselines, k=0):
    from rrm_plugin.attribution.engine import block_weights, pair_inputs
    from rrm_plugin.attribution.forward import attribution_forward

    forward = attribution_forward(vit, saes, images[:1], baselines=baselines, capture_blocks=True)
    layers, hooks = forward.layers, list(saes)
    x = pair_inputs(layers[k], layers[k + 1], forward.blocks[layers[k + 1].block],
                    saes[hooks[k]], saes[hooks[k + 1]], 0)
    return block_weights(vit, layers[k + 1].block), x


def test_subsets_of_sources_and_targets_give_the_matching_rows_and_columns(
        vit, saes, images, baselines):
    from rrm_plugin.attribution.engine import feature_edges
    from rrm_plugin.attribution.token_engine import token_edges

    graph = attribute(vit, saes, images[:1], baselines=baselines, granularity="token")[0]
    w, x = _pair_setup(vit, saes, images, baselines)
    src = torch.stack([graph.layers[0].tokens, graph.layers[0].features], 1)
    tgt = torch.stack([graph.layers[1].tokens, graph.layers[1].features], 1)
    full = graph.edges[0]
    # One target pair: its column (targets are independent of each other).
    active = int(torch.nonzero(graph.layers[1].activations > 0)[0, 0])
    one = token_edges(w, x, sources=src, targets=tgt[active:active + 1])
    # The same float32 products for one target instead of all: a few ulps (1 seen).
    torch.testing.assert_close(one, full[:, active:active + 1], atol=1e-7, rtol=1e-6)
    # No source nodes: only the error row, equal to the full graph's error row.
    none = token_edges(w, x, sources=src[:0], targets=tgt)
    assert none.shape == (1, len(tgt))
    torch.testing.assert_close(none[0], full[-1], atol=1e-7, rtol=1e-6)
    # Sources on the first token only (later tokens have none): those rows and the error row.
    first = src[:, 0] == 0
    part = token_edges(w, x, sources=src[first], targets=tgt)
    rows = torch.cat([torch.nonzero(first)[:, 0], torch.tensor([len(src)])])
    torch.testing.assert_close(part, full[rows], atol=1e-7, rtol=1e-6)
    # The one-image feature wrapper gives the feature graph's edges.
    feature = attribute(vit, saes, images[:1], baselines=baselines)[0]
    got = feature_edges(w, x, sources=feature.layers[0].features,
                        targets=feature.layers[1].features)
    torch.testing.assert_close(got, feature.edges[0], atol=1e-7, rtol=1e-6)


def test_top_k_storage_keeps_no_zero_edges(vit, saes, images, baselines):
    """A source at its baseline (delta 0) has exactly zero edges; the sparse matrix leaves them
    out rather than storing zeros."""
    from rrm_plugin.attribution.token_engine import token_edges

    graph = attribute(vit, saes, images[:1], baselines=baselines, granularity="token")[0]
    w, x = _pair_setup(vit, saes, images, baselines)
    at_baseline = torch.nonzero(x.src_delta == 0)[:2]
    src = torch.cat([at_baseline, torch.stack([graph.layers[0].tokens,
                                               graph.layers[0].features], 1)])
    tgt = torch.stack([graph.layers[1].tokens, graph.layers[1].features], 1)
    dense = token_edges(w, x, sources=src, targets=tgt)
    assert (dense[:2] == 0).all() and (dense[2:] != 0).any()
    sparse = token_edges(w, x, sources=src, targets=tgt, config=EngineConfig(token_top_k=10**6))
    assert torch.equal(sparse.to_dense(), dense)
    assert sparse._nnz() == int((dense != 0).sum())
