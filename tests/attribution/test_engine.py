"""The fast engine gives the numbers of the authors' jacrev reference (1e-4 relative)."""

import pytest
import torch

from rrm_plugin.attribution.baselines import compute_baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig
from tests.attribution.conftest import random_saes, sharp_vit
from tests.attribution.reference import reference_graph


def dense_edges(graph, k):
    """Graph edges of pair k scattered into a [d_src + 1, d_tgt] matrix (tokens summed)."""
    src, tgt = graph.layers[k], graph.layers[k + 1]
    out = torch.zeros(src.d_sae + 1, tgt.d_sae)
    rows = torch.cat([src.features, torch.tensor([src.d_sae])])
    out.index_put_((rows[:, None].expand(-1, len(tgt)), tgt.features[None, :].expand(len(rows),
                    -1)), graph.edges[k], accumulate=True)
    return out


def dense_nodes(graph, k):
    layer = graph.layers[k]
    return torch.zeros(layer.d_sae).index_add_(0, layer.features, layer.scores)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def assert_matches_reference(model, saes, images, baselines, **kwargs):
    graphs = attribute(model, saes, images, baselines=baselines, **kwargs)
    for b, graph in enumerate(graphs):
        ref = reference_graph(model, saes, images[b:b + 1], baselines=baselines,
                              target_class=graph.target_class, metric=graph.metric)
        for k in range(len(graph.layers)):
            assert rel_err(dense_nodes(graph, k), ref.node_scores[k].sum(0)) < 1e-4
            assert abs(graph.layers[k].error_score - ref.error_scores[k]) < 1e-4 * max(
                1.0, abs(ref.error_scores[k]))
        for k in range(len(graph.edges)):
            assert ref.edges[k].abs().max() > 0
            assert rel_err(dense_edges(graph, k), ref.edges[k]) < 1e-4
    return graphs


def test_engine_equals_jacrev_reference(vit, saes, images, baselines):
    graphs = assert_matches_reference(vit, saes, images, baselines)
    assert len(graphs) == len(images)


def test_engine_equals_reference_with_dense_mean_baselines(vit, saes, images, mean_baselines):
    assert_matches_reference(vit, saes, images[:1], mean_baselines, classes=[2], metric="logit")


@pytest.mark.parametrize("overrides", [
    {"activation_name": "relu"},
    {"activation_name": "gelu_new", "normalization_type": "LNPre"},
    {"n_layers": 4},
])
def test_engine_equals_reference_on_other_blocks(overrides, images, reference_images):
    model = sharp_vit(**overrides)
    saes = random_saes(model, d_sae=24, k=5)
    base = compute_baselines(model, saes, reference_images, progress=False)
    assert_matches_reference(model, saes, images[:1], base)


@pytest.mark.parametrize("extended", [
    # DINOv2-like: register tokens after CLS, a linear head on [CLS, mean patch].
    dict(n_registers=2, head_type="cls_mean_patch"),
    # CLIP-like: quick-GELU, LayerNorm before the blocks, cosine head on a projection.
    dict(activation_name="quick_gelu", layer_norm_pre=True, head_type="normalized_projection",
         projection_dim=6),
])
def test_engine_equals_reference_on_extended_vits(extended, images, reference_images):
    from rrm_plugin.hosts.vit import ExtendedViT, ExtendedViTConfig
    from tests.conftest import tiny_vit_config

    base = {k: v for k, v in vars(tiny_vit_config()).items() if k != "activation_name"}
    cfg = ExtendedViTConfig(**{**base, "activation_name": "gelu", **extended})
    model = sharp_vit()  # scaled weights of the plain tiny model, copied where names agree
    extended_model = ExtendedViT(cfg)
    from rrm_plugin.hosts.prisma import init_vit_weights

    torch.manual_seed(0)
    init_vit_weights(extended_model, std=0.3)
    state = {k: v for k, v in model.state_dict().items()
             if k in extended_model.state_dict() and k.startswith("blocks")}
    extended_model.load_state_dict(state, strict=False)
    extended_model.eval()
    assert isinstance(extended_model, ExtendedViT)
    saes = random_saes(extended_model, d_sae=24, k=5)
    base_lines = compute_baselines(extended_model, saes, reference_images, progress=False)
    assert_matches_reference(extended_model, saes, images[:1], base_lines)


def test_node_scores_are_sums_of_out_edges(vit, saes, images, mean_baselines):
    # Leaf errors: a source's score is exactly what its out-edges carry to the next layer.
    for graph in attribute(vit, saes, images, baselines=mean_baselines):
        for k, edges in enumerate(graph.edges):
            torch.testing.assert_close(edges[:-1].sum(1), graph.layers[k].scores, atol=1e-6,
                                       rtol=1e-4)
            torch.testing.assert_close(edges[-1].sum(), torch.tensor(graph.layers[k].error_score),
                                       atol=1e-6, rtol=1e-4)


def test_token_edges_sum_to_feature_edges_and_chunking_is_invisible(vit, saes, images, baselines):
    feature = attribute(vit, saes, images[:1], baselines=baselines)[0]
    token = attribute(vit, saes, images[:1], baselines=baselines, granularity="token",
                      engine=EngineConfig(chunk_elements=200))[0]
    small = attribute(vit, saes, images[:1], baselines=baselines,
                      engine=EngineConfig(chunk_elements=1))[0]
    for k in range(len(feature.edges)):
        torch.testing.assert_close(dense_edges(token, k), dense_edges(feature, k), atol=1e-6,
                                   rtol=1e-5)
        torch.testing.assert_close(small.edges[k], feature.edges[k], atol=1e-6, rtol=1e-5)
    for k, layer in enumerate(token.layers):
        # Token nodes: score = ghat[t, i] * (z[t, i] - z~[t, i]); their sum is the latent's score.
        torch.testing.assert_close(dense_nodes(token, k), dense_nodes(feature, k), atol=1e-6,
                                   rtol=1e-5)
        assert layer.tokens is not None and len(layer.tokens) == len(layer)


def test_token_edge_limit_is_enforced(vit, saes, images, baselines):
    with pytest.raises(ValueError, match="token-level edge matrix would have"):
        attribute(vit, saes, images[:1], baselines=baselines, granularity="token",
                  engine=EngineConfig(max_token_edges=10))


@pytest.mark.parametrize("kind", ["relu", "topk_cls"])
def test_engine_equals_reference_with_vit_prisma_style_saes(kind, vit, images, reference_images):
    # ReLU SAEs without input normalisation (dense, with biases), and class-token-only TopK SAEs.
    from tests.attribution.conftest import prisma_like_saes

    saes = prisma_like_saes(vit, kind=kind)
    base = compute_baselines(vit, saes, reference_images, progress=False)
    graphs = assert_matches_reference(vit, saes, images[:2], base)
    token_graph = attribute(vit, saes, images[:1], baselines=base, granularity="token")[0]
    if kind == "topk_cls":
        # Only the class token has features; the patches are carried by the error nodes.
        for layer in token_graph.layers:
            assert len(layer.tokens) > 0 and (layer.tokens == 0).all()
        assert all(abs(g.layers[0].error_score) > 0 for g in graphs)
    else:
        assert any((layer.tokens > 0).any() for layer in token_graph.layers)
