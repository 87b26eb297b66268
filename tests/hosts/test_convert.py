"""Upstream ViTs (timm, Hugging Face CLIP, DINOv2 with registers) converted to `ExtendedViT`.

Each upstream class is built at a small config with random weights and converted with the same
code the named models use; logits and every block output must equal the upstream model's on two
real photos (scikit-learn's sample images) within 1e-4.
"""

import pytest
import torch

from rrm_plugin.data.preprocessing import Preprocessing
from rrm_plugin.hosts.convert import (
    UnsupportedArchitectureError,
    convert_hf_clip,
    convert_hf_dinov2,
    convert_timm_vit,
)
from rrm_plugin.hosts.vit import n_prefix_tokens
from rrm_plugin.zoo.hub_models import AUTHORS_PREPROCESSING, CLIP_PREPROCESSING
from tests.conftest import sample_photos

TOL = dict(atol=1e-4, rtol=1e-4)


def randomise(module: torch.nn.Module, seed: int, *, std: float = 0.05) -> None:
    """Random values everywhere (LayerNorm gains and LayerScale included), so no term hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if p.ndim == 1 else 0.0)
                    * (torch.rand(p.shape, generator=g) > 0.5))


def resid_posts(model, images) -> list[torch.Tensor]:
    _, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_resid_post"))
    return [cache[f"blocks.{i}.hook_resid_post"] for i in range(model.cfg.n_layers)]


# --- timm ---------------------------------------------------------------------------------------

def small_timm(**kw):
    import timm

    args = dict(pretrained=False, depth=3, embed_dim=64, num_heads=4, img_size=32,
                patch_size=8, num_classes=10)
    return timm.create_model("vit_base_patch16_224", **{**args, **kw}).eval()


def test_timm_vit_logits_and_block_outputs_equal_upstream():
    upstream = small_timm()
    randomise(upstream, 0)
    x = sample_photos(Preprocessing(size=(32, 32), crop=None, mean=(0.5,) * 3, std=(0.5,) * 3))
    outputs = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in upstream.blocks]
    with torch.no_grad():
        expected = upstream(x)
    for h in handles:
        h.remove()
    model = convert_timm_vit(upstream, model_name="t")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, **TOL)
        for ours, theirs in zip(resid_posts(model, x), outputs, strict=True):
            torch.testing.assert_close(ours, theirs, **TOL)
    assert expected.std() > 0.1  # the comparison is not between near-constant outputs


def test_full_size_vit_b16_conversion():
    import timm

    upstream = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    model = convert_timm_vit(upstream, model_name="vit-b16-imagenet")
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.d_mlp,
            model.cfg.patch_size, model.cfg.n_classes) == (12, 768, 12, 3072, 16, 1000)
    x = sample_photos(AUTHORS_PREPROCESSING)
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), upstream(x), **TOL)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in upstream.parameters())


@pytest.mark.parametrize(("kw", "message"), [
    (dict(global_pool="avg"), "global_pool 'avg'"),
    (dict(init_values=1e-5), "LayerScale"),
    (dict(reg_tokens=4), "register tokens"),
    (dict(qk_norm=True), "q/k norm"),
])
def test_timm_features_we_cannot_represent_are_refused(kw, message):
    with pytest.raises(UnsupportedArchitectureError, match=message):
        convert_timm_vit(small_timm(**kw))


# --- CLIP -----------------------------------------------------------------------------------------

def small_clip(image_size: int = 32, patch_size: int = 8):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=600, max_position_embeddings=128),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                           hidden_act="quick_gelu"),
        projection_dim=16,
    )
    return CLIPModel(cfg).eval()


def test_clip_zero_shot_logits_and_block_outputs_equal_upstream():
    clip = small_clip()
    randomise(clip.vision_model, 1)
    randomise(clip.visual_projection, 2)
    classes = torch.randn(10, 16, generator=torch.Generator().manual_seed(3))
    x = sample_photos(Preprocessing(size=32, crop=32, mean=CLIP_PREPROCESSING.mean,
                             std=CLIP_PREPROCESSING.std, interpolation="bicubic"))
    with torch.no_grad():
        out = clip.vision_model(pixel_values=x, output_hidden_states=True)
        embeds = clip.visual_projection(out.pooler_output)
        expected = 2.5 * torch.nn.functional.cosine_similarity(
            embeds[:, None], classes[None], dim=-1)
    model = convert_hf_clip(clip, classes, logit_scale=2.5, model_name="c")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, **TOL)
        # hidden_states[0] is the pre-LayerNormed embedding; [l + 1] is block l's output.
        for ours, theirs in zip(resid_posts(model, x), out.hidden_states[1:], strict=True):
            torch.testing.assert_close(ours, theirs, **TOL)
    assert model.cfg.activation_name == "quick_gelu"


def test_clip_class_embeddings_must_match_the_projection():
    with pytest.raises(ValueError, match=r"class_embeddings must be \[n_classes, 16\]"):
        convert_hf_clip(small_clip(), torch.randn(10, 15))


# --- DINOv2 with registers --------------------------------------------------------------------

def small_dinov2(**kw):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    args = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2,
                patch_size=8, image_size=48, num_register_tokens=4)
    return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**{**args, **kw})).eval()


@pytest.mark.parametrize("image_size", [48, 32])  # 32: position embedding interpolated
def test_dinov2_registers_layerscale_and_head_equal_upstream(image_size):
    backbone = small_dinov2()
    randomise(backbone, 4)
    g = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(128, 7)
    with torch.no_grad():
        head.weight.copy_(torch.randn(7, 128, generator=g) * 0.1)
        head.bias.copy_(torch.randn(7, generator=g))
    x = sample_photos(Preprocessing(size=(image_size, image_size), crop=None, mean=(0.5,) * 3,
                             std=(0.5,) * 3))
    with torch.no_grad():
        out = backbone(pixel_values=x, output_hidden_states=True)
        tokens = out.last_hidden_state  # after the final LayerNorm
        pooled = torch.cat([tokens[:, 0], tokens[:, 1 + 4:].mean(1)], dim=-1)
        expected = head(pooled)
    model = convert_hf_dinov2(backbone, head, image_size=image_size, model_name="d")
    assert n_prefix_tokens(model) == 5
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, **TOL)
        blocks = resid_posts(model, x)
        assert blocks[0].shape[1] == 5 + (image_size // 8) ** 2
        for ours, theirs in zip(blocks, out.hidden_states[1:], strict=True):
            torch.testing.assert_close(ours, theirs, **TOL)


def test_dinov2_layerscale_is_folded_not_dropped():
    backbone = small_dinov2()
    randomise(backbone, 6)
    head = torch.nn.Linear(128, 3)
    model = convert_hf_dinov2(backbone, head, image_size=48)
    with torch.no_grad():
        for layer in backbone.encoder.layer:
            layer.layer_scale1.lambda1.mul_(2.0)
    changed = convert_hf_dinov2(backbone, head, image_size=48)
    assert not torch.allclose(model.blocks[0].attn.W_O, changed.blocks[0].attn.W_O)
    torch.testing.assert_close(model.blocks[0].mlp.W_out, changed.blocks[0].mlp.W_out)


def test_dinov2_unsupported_and_bad_heads_are_refused():
    with pytest.raises(UnsupportedArchitectureError, match="SwiGLU"):
        convert_hf_dinov2(small_dinov2(use_swiglu_ffn=True), torch.nn.Linear(128, 3))
    with pytest.raises(UnsupportedArchitectureError, match="not a multiple of the patch size"):
        convert_hf_dinov2(small_dinov2(), torch.nn.Linear(128, 3), image_size=50)
    with pytest.raises(ValueError, match=r"head must be \[n_classes, 128\]"):
        convert_hf_dinov2(small_dinov2(), torch.nn.Linear(64, 3))
