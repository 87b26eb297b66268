"""The linearised backward pass: forward values untouched, blocks affine under the freezes."""

import pytest
import torch

import rrm_plugin
from rrm_plugin.attribution.linearise import (
    FULL,
    NONE,
    Linearisation,
    activation_gate,
    capture_constants,
    frozen,
    linearised,
)
from rrm_plugin.replacement.splice import splice_saes
from tests.attribution.conftest import random_saes, sharp_vit


def test_forward_values_are_unchanged(vit, saes, images):
    clean = vit(images)
    with linearised(vit, saes):
        assert torch.equal(vit(images), clean)  # bit for bit: only the backward pass changes
        with splice_saes(vit, saes, keep_error=True):
            torch.testing.assert_close(vit(images), clean, atol=1e-5, rtol=0)
    with splice_saes(vit, saes, keep_error=True), linearised(vit, saes):
        torch.testing.assert_close(vit(images), clean, atol=1e-5, rtol=0)
    assert all(not hp._forward_hooks for hp in vit.hook_dict.values())  # hooks removed


def test_gelu_gate_matches_activation():
    # Float64: the gates are the activations' own formulas, equal to ~1e-12 (gelu_fast's rounded
    # constant). In float32, 1 + erf(x / sqrt(2)) cancels for x << 0 and leaves ~|x| * 1e-7
    # (5.6e-7 at x = -3.76), too close to any tolerance that still tells formulas apart.
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    from transformers.activations import ACT2FN

    tanh_gelu = lambda v: torch.nn.functional.gelu(v, approximate="tanh")  # noqa: E731
    for name, act in [("gelu", torch.nn.functional.gelu), ("relu", torch.relu),
                      ("silu", torch.nn.functional.silu), ("quick_gelu", ACT2FN["quick_gelu"]),
                      ("gelu_new", ACT2FN["gelu_new"]), ("gelu_fast", ACT2FN["gelu_fast"]),
                      ("gelu_pytorch_tanh", tanh_gelu)]:
        torch.testing.assert_close(x * activation_gate(name)(x), act(x), atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="cannot linearise MLP activation 'solu_ln'"):
        activation_gate("solu_ln")


def _stream_gradient(model, images, w, config):
    """Gradient of w . block-1 output w.r.t. block 0's output, under `config`."""
    live = {}
    keep = [("blocks.0.hook_resid_post", lambda x, hook: live.__setitem__("x", x))]
    with linearised(model, config=config), model.hooks(fwd_hooks=keep), torch.enable_grad():
        out = model(images, stop_at_layer=2)
        return torch.autograd.grad((out * w).sum(), live["x"])[0]


def test_linearised_block_is_affine_and_its_jvp_matches_the_backward_pass(vit, images):
    image = images[:1]
    with torch.no_grad():
        x0 = vit(image, stop_at_layer=1)
    w = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(0))
    grad = _stream_gradient(vit, image, w, FULL)
    with splice_saes(vit, {}, keep_error=True):
        constants = capture_constants(vit, {}, image)
        with frozen(vit, {}, constants), torch.no_grad():
            def block(delta):
                """w . (output of block 1 when its input is x0 + delta), all constants frozen."""
                hooks = [("blocks.0.hook_resid_post", lambda x, hook: x0 + delta)]
                with vit.hooks(fwd_hooks=hooks):
                    return (vit(image, stop_at_layer=2) * w).sum()

            f0 = block(torch.zeros_like(x0))
            d1, d2 = (torch.randn(x0.shape, generator=torch.Generator().manual_seed(s))
                      for s in (1, 2))
            # Affine: second differences vanish even for large steps ...
            second = block(3 * d1 + 5 * d2) - block(3 * d1) - block(5 * d2) + f0
            assert abs(float(second)) < 1e-4 * abs(float(block(3 * d1) - f0))
            # ... and the finite difference is the linearised backward pass's JVP, exactly.
            for scale in (1.0, 10.0):
                fd = (block(scale * d1) - f0) / scale
                torch.testing.assert_close(fd, (grad * d1).sum(), rtol=1e-4, atol=1e-5)
    true_grad = _stream_gradient(vit, image, w, NONE)
    assert (true_grad - grad).abs().max() > 1e-2 * grad.abs().max()  # the freezes matter


@pytest.mark.parametrize("field", ["attention_pattern", "layer_norm_scale", "gelu_gate"])
def test_each_freeze_changes_the_gradient(vit, images, field):
    w = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(0))
    only = Linearisation(**{f: f == field for f in ("attention_pattern", "layer_norm_scale",
                                                     "gelu_gate", "sae_input_std")})
    plain = _stream_gradient(vit, images[:1], w, NONE)
    frozen_one = _stream_gradient(vit, images[:1], w, only)
    assert (plain - frozen_one).abs().max() > 1e-4 * plain.abs().max()


def test_sae_input_std_is_constant_and_decoder_depends_on_latents_only(vit, images):
    saes = random_saes(vit, layers=[0])
    sae = saes["blocks.0.hook_resid_post"]
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    with linearised(vit, saes):
        z = sae.encode(x)
        z_leaf = z.detach().requires_grad_()
        x_hat = sae.decode(z_leaf)
        # The decoder's mean and std are constants: x_hat = s (z W_dec + b_dec) + mu exactly.
        (g_z,) = torch.autograd.grad((x_hat * torch.arange(16.0)).sum(), z_leaf)
        g = torch.autograd.grad((z * torch.arange(32.0)).sum(), x)[0]
    # Encoder derivative with frozen std: (centre(W_enc) / (s + eps)) for the selected latents.
    std = (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True)
    mask = (z > 0).float()
    W = sae.W_enc.detach()
    expected = ((mask * torch.arange(32.0)) @ (W - W.mean(0, keepdim=True)).T) / (std + 1e-5)
    # Autograd against the hand formula: float32 sums of 32 (below 16) weighted terms in another
    # order, ~1e-6 relative (3.8e-6 on entries of ~30 seen); rtol=1e-5.
    torch.testing.assert_close(g, expected.detach(), rtol=1e-5, atol=1e-6)
    decoder_dirs = sae.W_dec.detach() @ torch.arange(16.0)  # [d_sae]
    torch.testing.assert_close(g_z, std.detach() * decoder_dirs[None, :], rtol=1e-5, atol=1e-6)
    assert sae.run_time_activation_norm_fn_in.__name__ == "run_time_activation_ln_in"  # restored


def test_keep_error_forward_with_linearisation_equals_clean_for_other_activations(images):
    model = sharp_vit(activation_name="gelu_new")
    saes = random_saes(model)
    clean = model(images)
    with rrm_plugin.splice_saes(model, saes, keep_error=True), linearised(model, saes):
        torch.testing.assert_close(model(images), clean, atol=1e-5, rtol=0)


def test_other_sae_input_normalisations_are_refused(vit, saes, images):
    sae = saes["blocks.1.hook_resid_post"]
    sae.cfg.normalize_activations = "expected_average_only_in"
    with pytest.raises(ValueError, match=r"^SAE at 'blocks\.1\.hook_resid_post' uses "
                                         r"normalize_activations='expected_average_only_in'; "
                                         r"attribution supports 'layer_norm' \(the RRM SAEs\) "
                                         r"and 'none'$"):
        with linearised(vit, saes, config=FULL):
            pass


def test_activation_name_reads_prisma_or_transformer_lens_configs():
    from types import SimpleNamespace

    from rrm_plugin.attribution.linearise import activation_name

    def model(**cfg):
        return SimpleNamespace(cfg=SimpleNamespace(**cfg))

    assert activation_name(model(activation_name="quick_gelu", act_fn="relu")) == "quick_gelu"
    assert activation_name(model(act_fn="gelu_new")) == "gelu_new"  # TransformerLens's name
    assert activation_name(model(activation_name=None, act_fn="relu")) == "relu"
    with pytest.raises(ValueError, match=r"^model config names no MLP activation "
                                         r"\(activation_name / act_fn\)$"):
        activation_name(model(activation_name=None))
