import pytest
import torch

import rrm_plugin
from rrm_plugin.replacement.interventions import FeatureIntervention, intervention_hooks
from rrm_plugin.replacement.splice import SAE_HOOK_NAMES, splice_saes
from rrm_plugin.saes.training import new_topk_sae


def test_keep_error_reproduces_clean_logits(tiny_vit, tiny_saes, tiny_images):
    clean = tiny_vit(tiny_images)
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=True):
        spliced = tiny_vit(tiny_images)
    torch.testing.assert_close(spliced, clean, atol=1e-5, rtol=0)


def test_drop_error_equals_saelens_forward_at_each_hook(tiny_vit, tiny_saes, tiny_images):
    # Reference: SAELens's own SAE.forward (no error term) spliced with a plain host hook.
    hooks = [(h, lambda act, hook, sae=sae: sae(act)) for h, sae in tiny_saes.items()]
    with torch.no_grad():
        reference = tiny_vit.run_with_hooks(tiny_images, fwd_hooks=hooks)
        with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=False):
            spliced = tiny_vit(tiny_images)
    torch.testing.assert_close(spliced, reference, atol=1e-6, rtol=1e-5)
    assert (spliced - tiny_vit(tiny_images)).abs().max() > 1e-3  # random SAEs do change it


def test_sae_activations_and_errors_appear_in_host_cache(tiny_vit, tiny_saes, tiny_images):
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=False):
        _, cache = tiny_vit.run_with_cache(tiny_images)
    for hook, sae in tiny_saes.items():
        for name in SAE_HOOK_NAMES:
            assert f"{hook}.{name}" in cache
        acts = cache[f"{hook}.hook_sae_acts_post"]
        assert acts.shape == (4, 5, sae.cfg.d_sae)
        assert ((acts > 0).sum(-1) <= sae.cfg.k).all()
        x = cache[f"{hook}.hook_sae_input"]
        recon = sae.decode(sae.encode(x))
        torch.testing.assert_close(cache[f"{hook}.hook_sae_error"], x - recon)
        torch.testing.assert_close(cache[f"{hook}.hook_sae_output"], recon)
        torch.testing.assert_close(cache[hook], recon)  # users' hooks on H see the spliced stream


def test_only_chosen_layers_are_spliced(tiny_vit, tiny_saes, tiny_images):
    chosen = ["blocks.1.hook_resid_post"]
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes, hook_names=chosen):
        _, cache = tiny_vit.run_with_cache(tiny_images)
    assert "blocks.1.hook_resid_post.hook_sae_acts_post" in cache
    assert "blocks.0.hook_resid_post.hook_sae_acts_post" not in cache
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"],
                               tiny_vit.run_with_cache(tiny_images)[1]["blocks.0.hook_resid_post"])


def test_hooks_are_removed_afterwards_also_on_exceptions(tiny_vit, tiny_saes, tiny_images):
    before = set(tiny_vit.hook_dict)
    clean = tiny_vit(tiny_images)
    with pytest.raises(RuntimeError, match="boom"), rrm_plugin.splice_saes(tiny_vit, tiny_saes):
        raise RuntimeError("boom")
    assert set(tiny_vit.hook_dict) == before
    assert all(not hp._forward_hooks for hp in tiny_vit.hook_dict.values())
    torch.testing.assert_close(tiny_vit(tiny_images), clean, atol=0, rtol=0)
    for sae in tiny_saes.values():
        assert all(not getattr(sae, n)._forward_hooks for n in SAE_HOOK_NAMES)


def test_set_feature_changes_the_stream_by_its_decoder_direction(tiny_vit, tiny_saes, tiny_images):
    hook, sae = "blocks.1.hook_resid_post", tiny_saes["blocks.1.hook_resid_post"]
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=True):
        _, clean = tiny_vit.run_with_cache(tiny_images)
        iv = FeatureIntervention(hook, features=[3], tokens=[0, 2], value=2.5)
        with tiny_vit.hooks(fwd_hooks=intervention_hooks([iv])):
            _, edited = tiny_vit.run_with_cache(tiny_images)
    acts = edited[f"{hook}.hook_sae_acts_post"]
    assert torch.all(acts[:, [0, 2], 3] == 2.5)
    torch.testing.assert_close(acts[:, 1], clean[f"{hook}.hook_sae_acts_post"][:, 1])
    # Keep-error mode: the stream moves by s_t * (2.5 - z_t) * W_dec[3] at the edited tokens only.
    x = clean[f"{hook}.hook_sae_input"]
    s = (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True)
    dz = 2.5 - clean[f"{hook}.hook_sae_acts_post"][..., 3:4]
    expected = clean[hook].clone()
    expected[:, [0, 2]] += (s * dz * sae.W_dec[3])[:, [0, 2]]
    torch.testing.assert_close(edited[hook], expected, atol=1e-5, rtol=1e-5)


def test_scale_by_one_is_a_no_op(tiny_vit, tiny_saes, tiny_images):
    iv = FeatureIntervention("blocks.0.hook_resid_post", features=range(32), scale=1.0)
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=False):
        base = tiny_vit(tiny_images)
        scaled = tiny_vit.run_with_hooks(tiny_images, fwd_hooks=intervention_hooks([iv]))
    torch.testing.assert_close(scaled, base)


def test_bad_interventions_are_rejected(tiny_vit, tiny_saes, tiny_images):
    with pytest.raises(ValueError, match="exactly one of value= or scale="):
        FeatureIntervention("blocks.0.hook_resid_post", features=[0])
    iv = FeatureIntervention("blocks.0.hook_resid_post", features=[32], value=1.0)
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes), pytest.raises(IndexError, match="range"):
        tiny_vit.run_with_hooks(tiny_images, fwd_hooks=intervention_hooks([iv]))


def test_sae_width_not_matching_hook_is_rejected(tiny_vit):
    wide = new_topk_sae(d_in=24, d_sae=8, k=2, hook_name="blocks.0.hook_resid_post", model_name="m")
    with pytest.raises(ValueError, match=r"d_in=24, but the residual stream .* d_model=16"):
        with rrm_plugin.splice_saes(tiny_vit, {"blocks.0.hook_resid_post": wide}):
            pass


def test_unknown_hook_and_misplaced_sae_are_rejected(tiny_vit, tiny_saes):
    with pytest.raises(KeyError, match=r"no hook point 'blocks.9.hook_resid_post'"):
        with rrm_plugin.splice_saes(tiny_vit, {"blocks.9.hook_resid_post": tiny_saes[
                "blocks.0.hook_resid_post"]}):
            pass
    with pytest.raises(ValueError, match="trained at 'blocks.0.hook_resid_post' but is being"):
        with rrm_plugin.splice_saes(
            tiny_vit, {"blocks.1.hook_resid_post": tiny_saes["blocks.0.hook_resid_post"]}
        ):
            pass
    with pytest.raises(KeyError, match="no SAE given"):
        with rrm_plugin.splice_saes(tiny_vit, tiny_saes, hook_names=["blocks.2.hook_resid_post"]):
            pass


def test_bad_images_are_rejected_inside_replacement(tiny_vit, tiny_saes):
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes):
        with pytest.raises(ValueError, match="2 channels, model expects 3"):
            tiny_vit(torch.rand(1, 2, 8, 8))
        with pytest.raises(ValueError, match="NaN/inf"):
            tiny_vit(torch.full((1, 3, 8, 8), float("inf")))


def test_works_on_a_transformerlens_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32,
                                  n_ctx=8, d_vocab=20, act_fn="gelu", seed=0)
    model = HookedTransformer(cfg).eval()
    sae = new_topk_sae(d_in=16, d_sae=32, k=4, hook_name="blocks.0.hook_resid_post",
                       model_name="tl")
    tokens = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(0))
    clean = model(tokens)
    with splice_saes(model, {"blocks.0.hook_resid_post": sae}, keep_error=True):
        kept, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(kept, clean, atol=1e-5, rtol=0)
    assert cache["blocks.0.hook_resid_post.hook_sae_acts_post"].shape == (2, 8, 32)
    with splice_saes(model, {"blocks.0.hook_resid_post": sae}, keep_error=False):
        dropped = model(tokens)
    ref = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post",
                                                   lambda a, hook: sae(a))])
    torch.testing.assert_close(dropped, ref, atol=1e-5, rtol=1e-5)
    assert "blocks.0.hook_resid_post.hook_sae_acts_post" not in model.hook_dict


def _class_token_only(saes):
    for sae in saes.values():
        sae.cfg.metadata.seqpos_slice = (0, 1)  # SAELens's record of the trained positions
    return saes


def test_class_token_sae_replaces_only_the_class_token(tiny_vit, tiny_saes, tiny_images):
    saes = _class_token_only(tiny_saes)
    hook = "blocks.1.hook_resid_post"
    with torch.no_grad():
        _, clean = tiny_vit.run_with_cache(tiny_images)
        clean_logits = tiny_vit(tiny_images)
        with rrm_plugin.splice_saes(tiny_vit, {hook: saes[hook]}, keep_error=False):
            _, cache = tiny_vit.run_with_cache(tiny_images)
        with rrm_plugin.splice_saes(tiny_vit, saes, keep_error=True):
            kept = tiny_vit(tiny_images)
    torch.testing.assert_close(kept, clean_logits, atol=1e-5, rtol=0)
    acts = cache[f"{hook}.hook_sae_acts_post"]
    assert (acts[:, 1:] == 0).all() and ((acts[:, 0] > 0).sum(-1) == saes[hook].cfg.k).all()
    x = clean[hook]
    torch.testing.assert_close(acts[:, 0], saes[hook].encode(x[:, :1])[:, 0])
    # The class token is the SAE's reconstruction; the patches pass through unchanged.
    out = cache[hook]
    torch.testing.assert_close(out[:, 0], saes[hook](x[:, :1])[:, 0], atol=1e-6, rtol=1e-5)
    # Up to float32 rounding: an ulp of |x| < 2 (1.2e-7) seen; atol 1e-6 is ~8 such ulps.
    torch.testing.assert_close(out[:, 1:], x[:, 1:], atol=1e-6, rtol=0)
    assert (out[:, 0] - x[:, 0]).abs().max() > 1e-3


def test_bad_seqpos_slice_is_rejected(tiny_vit, tiny_saes, tiny_images):
    hook = "blocks.0.hook_resid_post"
    tiny_saes[hook].cfg.metadata.seqpos_slice = (0, "1")
    with pytest.raises(ValueError, match="seqpos_slice"), rrm_plugin.splice_saes(
            tiny_vit, {hook: tiny_saes[hook]}):
        tiny_vit(tiny_images)


def test_backward_hooks_on_latents_fire_without_forward_hooks(tiny_vit, tiny_saes, tiny_images):
    # Only a backward hook on the latents: the relay must still route them through the host hook.
    name = "blocks.1.hook_resid_post.hook_sae_acts_post"
    grads = []
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=False):
        with tiny_vit.hooks(bwd_hooks=[(name, lambda g, hook: grads.append(g))]):
            tiny_vit(tiny_images)[:, 0].sum().backward()
        # Reference: the same gradient by autograd, from the latents a forward hook keeps.
        kept = {}

        def keep(acts, hook):
            kept["acts"] = acts
            return acts

        out = tiny_vit.run_with_hooks(tiny_images, fwd_hooks=[(name, keep)])
        (reference,) = torch.autograd.grad(out[:, 0].sum(), kept["acts"])
    assert len(grads) == 1
    torch.testing.assert_close(grads[0], reference, atol=1e-6, rtol=1e-5)
    assert reference.abs().max() > 0


def test_width_mismatch_at_a_non_residual_hook_is_named(tiny_vit, tiny_images):
    # No d_model check applies to the MLP hidden layer (width d_mlp = 32): the forward names it.
    sae = new_topk_sae(d_in=16, d_sae=8, k=2, hook_name="blocks.0.mlp.hook_post", model_name="m")
    message = (r"^activation at blocks.0.mlp.hook_post has width 32, but the SAE spliced there "
               r"has d_in=16$")
    with rrm_plugin.splice_saes(tiny_vit, {"blocks.0.mlp.hook_post": sae}):
        with pytest.raises(ValueError, match=message):
            tiny_vit(tiny_images)


def test_unknown_hook_message_lists_the_residual_hook_points(tiny_vit, tiny_saes):
    resid = [f"blocks.{b}.hook_resid_{s}" for b in range(3) for s in ("pre", "mid", "post")]
    # UnknownNameError (a KeyError) prints its sentence without KeyError's quotes.
    message = (r"^model has no hook point 'blocks.9.hook_resid_post'; residual hook points are "
               + str(resid).replace("[", r"\[").replace("]", r"\]") + "$")
    with pytest.raises(KeyError, match=message):
        with rrm_plugin.splice_saes(tiny_vit, {"blocks.9.hook_resid_post": tiny_saes[
                "blocks.0.hook_resid_post"]}):
            pass


def test_float32_saes_in_a_float64_model_keep_the_models_dtype(tiny_saes, tiny_images):
    from rrm_plugin.hosts.prisma import build_hooked_vit
    from tests.conftest import tiny_vit_config

    model = build_hooked_vit(tiny_vit_config(dtype=torch.float64), seed=0).eval().double()
    images = tiny_images.double()
    hooks = [(h, lambda act, hook, sae=sae: sae(act.float()).double())
             for h, sae in tiny_saes.items()]
    with torch.no_grad():
        reference = model.run_with_hooks(images, fwd_hooks=hooks)
        with rrm_plugin.splice_saes(model, tiny_saes, keep_error=False):
            spliced, cache = model.run_with_cache(images)
    for hook in tiny_saes:
        assert cache[hook].dtype == torch.float64
        assert cache[f"{hook}.hook_sae_recons"].dtype == torch.float32
    assert spliced.dtype == torch.float64
    torch.testing.assert_close(spliced, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_position_mask_has_the_activations_dtype(dtype):
    from rrm_plugin.replacement.splice import _mask_like

    mask = _mask_like(torch.ones(2, 4, 3, dtype=dtype), slice(1, 3))
    assert mask.dtype == dtype
    assert mask.tolist() == [0, 1, 1, 0]


def test_fixed_errors_replace_the_error_and_skip_the_clean_reconstruction(
        tiny_vit, tiny_saes, tiny_images, monkeypatch):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad(), rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=True):
        _, cache = tiny_vit.run_with_cache(tiny_images)
    fixed = {h: torch.randn(cache[f"{h}.hook_sae_error"].shape, generator=g) for h in tiny_saes}
    halve = [(f"{h}.hook_sae_acts_post", lambda z, hook: z * 0.5) for h in tiny_saes]
    # Oracle: the ordinary splice, a host hook setting each error to the fixed one.
    set_error = [(f"{h}.hook_sae_error", lambda e, hook, f=f: f) for h, f in fixed.items()]
    encodes = {h: 0 for h in tiny_saes}
    for h, sae in tiny_saes.items():
        def counted(x, h=h, real=sae.encode):
            encodes[h] += 1
            return real(x)
        monkeypatch.setattr(sae, "encode", counted)
    with torch.no_grad():
        with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=True):
            want = tiny_vit.run_with_hooks(tiny_images, fwd_hooks=halve + set_error)
        assert set(encodes.values()) == {2}  # hooks on the latents: the clean pass too
        with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=True, fixed_errors=fixed):
            got = tiny_vit.run_with_hooks(tiny_images, fwd_hooks=halve)
            assert set(encodes.values()) == {3}  # one pass more each
            _, got_cache = tiny_vit.run_with_cache(tiny_images)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    for h in tiny_saes:
        assert torch.equal(got_cache[f"{h}.hook_sae_error"], fixed[h])
    with pytest.raises(rrm_plugin.RRMUserError, match="fixed error at"):
        with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=True,
                                    fixed_errors={h: f[:, :2] for h, f in fixed.items()}):
            tiny_vit(tiny_images)
