"""The traced batch of `attribution_forward` against quantities read off the host cache and the
jacrev reference: stream statistics, deltas, gradients, block constants."""

import torch

from rrm_plugin.attribution.forward import attribution_forward
from rrm_plugin.replacement.splice import splice_saes
from tests.attribution.conftest import prisma_like_saes
from tests.attribution.reference import reference_graph


def _cache(model, saes, images):
    with torch.no_grad(), splice_saes(model, saes, keep_error=True):
        return model.run_with_cache(images)[1]


def test_layer_traces_match_the_cache_and_the_reference(vit, saes, images, baselines):
    forward = attribution_forward(vit, saes, images[:2], baselines=baselines, classes=[3, 1],
                                  metric="logit", capture_blocks=True)
    cache = _cache(vit, saes, images[:2])
    assert forward.classes.tolist() == [3, 1] and forward.metric == "logit"
    torch.testing.assert_close(forward.values, forward.logits[[0, 1], [3, 1]])
    for k, (trace, h) in enumerate(zip(forward.layers, saes, strict=True)):
        assert (trace.hook_name, trace.block) == (h, k)
        x = cache[f"{h}.hook_sae_input"]
        std = x.std(-1, keepdim=True)  # unbiased, as SAELens's layer_norm normalisation
        torch.testing.assert_close(trace.scale, std, atol=1e-7, rtol=1e-6)
        # The encoder divides by std + 1e-5: exact to float32 rounding, not to 1e-5 of std.
        torch.testing.assert_close(trace.enc_scale, std + 1e-5, atol=1e-7, rtol=1e-7)
        acts = cache[f"{h}.hook_sae_acts_post"]
        assert torch.equal(trace.acts, acts)
        assert torch.equal(trace.delta, acts - baselines.features[h])
        assert torch.equal(trace.error_delta, cache[f"{h}.hook_sae_error"] - baselines.errors[h])
        for b, cls in enumerate((3, 1)):
            ref = reference_graph(vit, saes, images[b:b + 1], baselines=baselines,
                                  target_class=cls, metric="logit")
            torch.testing.assert_close(trace.grad_acts[b], ref.grads[k], atol=1e-6, rtol=1e-4)
    block = forward.blocks[1]
    torch.testing.assert_close(block.ln1_scale, cache["blocks.1.ln1.hook_scale"])
    torch.testing.assert_close(block.pattern, cache["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(block.ln2_scale, cache["blocks.1.ln2.hook_scale"])
    pre = cache["blocks.1.mlp.hook_pre"]
    # The float32 gate 0.5 (1 + erf(pre / sqrt 2)) and torch's gelu use erfs a few ulps (6e-8
    # each near -1) apart, and pre multiplies that: ~|pre| * 1.5e-7 seen, 5e-7 |pre| allowed.
    torch.testing.assert_close(pre * block.gate, torch.nn.functional.gelu(pre),
                               atol=5e-7 * float(pre.abs().max()), rtol=1e-5)


def test_saes_without_input_normalisation_have_unit_scales(vit, images, reference_images):
    from rrm_plugin.attribution.baselines import compute_baselines

    saes = prisma_like_saes(vit, kind="relu")
    base = compute_baselines(vit, saes, reference_images, progress=False)
    forward = attribution_forward(vit, saes, images[:1], baselines=base)
    for trace in forward.layers:
        assert torch.equal(trace.scale, torch.ones(1, 5, 1))
        assert torch.equal(trace.enc_scale, torch.ones(1, 5, 1))
    assert forward.blocks == {}  # not asked for
