"""Models by name, loaded offline through their real upstream loaders from hub-cache fixtures.

The fixtures hold random weights in the exact upstream layouts (timm's `model.safetensors`,
transformers' `save_pretrained` folders, torch hub's DINOv2 head checkpoint); each named model must
compute what the upstream model computes on real photos.
"""

import json

import pytest
import torch

import rrm_plugin
from rrm_plugin.saes.hub import CheckpointNotFoundError
from rrm_plugin.zoo.hub_models import (
    DATACOMP_B32_REPO,
    DINOV2_REPO,
    HUB_MODELS,
    cache_dir,
    dinov2_head_path,
    open_clip_snapshot,
    openai_imagenet_prompts,
)
from tests.conftest import sample_photos
from tests.hubcache import (
    add_file,
    add_folder,
    add_open_clip,
    tiny_open_clip_config,
    torch_bytes,
    use_hub_cache,
)

# HookedViT against the upstream implementation, both float32: the same network summed in
# other orders over 12 blocks of width 768 (<= 2.7e-6 seen on the logits); 1e-4 is ~40x that.
TOL = dict(atol=1e-4, rtol=1e-4)


def photos(name: str) -> torch.Tensor:
    return sample_photos(HUB_MODELS[name].preprocessing)


def test_vit_b16_imagenet_by_name_equals_timm(vit_b16_hub, tmp_path, monkeypatch):
    cache, upstream, _ = vit_b16_hub
    use_hub_cache(monkeypatch, cache, tmp_path)
    model = rrm_plugin.load_model("vit-b16-imagenet")
    x = photos("vit-b16-imagenet")
    with torch.no_grad():
        torch.testing.assert_close(model(x), upstream(x), **TOL)
    assert model.cfg.model_name == "vit-b16-imagenet" and model.cfg.n_classes == 1000


def test_uncached_models_offline_name_what_was_looked_for(offline_hub):
    with pytest.raises(CheckpointNotFoundError, match="vit_base_patch16_224.augreg2_in21k_ft_in1k"):
        rrm_plugin.load_model("vit-b16-imagenet")
    with pytest.raises(CheckpointNotFoundError, match="openai/clip-vit-base-patch16"):
        rrm_plugin.load_model("clip-vit-b16")
    with pytest.raises(CheckpointNotFoundError, match="facebook/dinov2-with-registers-base"):
        rrm_plugin.load_model("dinov2-vitb14-reg")
    with pytest.raises(CheckpointNotFoundError, match="laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"):
        rrm_plugin.load_model("clip-vit-b32-datacomp")
    with pytest.raises(KeyError, match="unknown model 'vit-h14'; available models: .*clip-vit-b32"):
        rrm_plugin.load_model("vit-h14")


# --- CLIP with its zero-shot head ---------------------------------------------------------------

def clip_tokenizer(folder):
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # Character-level BPE vocabulary (no merges): enough for a real CLIPTokenizer.
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


@pytest.fixture
def clip_hub(offline_hub, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        # The pooled text feature is read at the end-of-text token: its id must be the vocab's.
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=520, max_position_embeddings=128,
                         bos_token_id=512, eos_token_id=513, pad_token_id=513),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=224, patch_size=32,
                           hidden_act="quick_gelu"),
        projection_dim=16,
    )
    clip = CLIPModel(cfg).eval()
    with torch.no_grad():  # larger weights: text features whose norms differ between prompts
        for p in clip.text_model.parameters():
            if p.ndim >= 2:
                p.mul_(8.0)
    tokenizer = clip_tokenizer(tmp_path / "tok")
    clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    add_folder(offline_hub, "openai/clip-vit-base-patch32", tmp_path / "clip")
    return clip, tokenizer


def expected_class_embedding(clip, tokenizer, class_name: str) -> torch.Tensor:
    """OpenAI's recipe: mean over the 80 templates of the raw text features, then normalised."""
    _, templates = openai_imagenet_prompts()
    tokens = tokenizer([t(class_name) for t in templates], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = clip.text_model(input_ids=tokens["input_ids"],
                                 attention_mask=tokens["attention_mask"]).pooler_output
        mean = clip.text_projection(hidden).mean(0)
    return mean / mean.norm()


def test_clip_by_name_equals_upstream_zero_shot_and_caches_its_head(clip_hub):
    clip, tokenizer = clip_hub
    model = rrm_plugin.load_model("clip-vit-b32")
    names, _ = openai_imagenet_prompts()
    assert model.cfg.n_classes == len(names) == 1000
    x = photos("clip-vit-b32")
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=x).pooler_output
        image = torch.nn.functional.normalize(clip.visual_projection(pooled), dim=-1)
    chosen = [0, 1, 417, 998, 999]
    classes = torch.stack([expected_class_embedding(clip, tokenizer, names[i]) for i in chosen])
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits[:, chosen], image @ classes.T, **TOL)
    assert (classes[0] - classes[1]).abs().max() > 1e-2  # class names do change the head
    # The head was written to the cache and is used from there on (same logits, no rebuild).
    cached = list((cache_dir() / "zero_shot").glob("openai--clip-vit-base-patch32-*.safetensors"))
    assert len(cached) == 1
    again = rrm_plugin.load_model("clip-vit-b32")
    with torch.no_grad():
        torch.testing.assert_close(again(x), logits, atol=0, rtol=0)


# --- DINOv2 with registers and its linear head ---------------------------------------------------

@pytest.fixture
def dinov2_hub(offline_hub, tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    mlp_ratio=2, patch_size=14, image_size=518,
                                    num_register_tokens=4, layerscale_value=0.5)
    backbone = Dinov2WithRegistersModel(cfg).eval()
    backbone.save_pretrained(tmp_path / "dino")
    add_folder(offline_hub, DINOV2_REPO, tmp_path / "dino")
    head = {"weight": torch.randn(1000, 64) * 0.1, "bias": torch.randn(1000)}
    dinov2_head_path().parent.mkdir(parents=True)
    dinov2_head_path().write_bytes(torch_bytes(head))
    return backbone, head


def test_dinov2_by_name_equals_upstream_with_registers_and_head(dinov2_hub):
    backbone, head = dinov2_hub
    model = rrm_plugin.load_model("dinov2-vitb14-reg")
    x = photos("dinov2-vitb14-reg")
    with torch.no_grad():
        tokens = backbone(pixel_values=x).last_hidden_state
        pooled = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1)
        expected = pooled @ head["weight"].T + head["bias"]
        torch.testing.assert_close(model(x), expected, **TOL)
    assert model.cfg.n_registers == 4 and model.cfg.image_size == 224


def test_dinov2_head_missing_offline_names_the_path(offline_hub, tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    patch_size=14, image_size=518)
    Dinov2WithRegistersModel(cfg).save_pretrained(tmp_path / "dino")
    add_folder(offline_hub, DINOV2_REPO, tmp_path / "dino")
    with pytest.raises(CheckpointNotFoundError, match="dinov2_vitb14_reg4_linear_head.pth"):
        rrm_plugin.load_model("dinov2-vitb14-reg")
    dinov2_head_path().parent.mkdir(parents=True)
    dinov2_head_path().write_bytes(torch_bytes({"weight": torch.zeros(1000, 10),
                                                "bias": torch.zeros(1000)}))
    with pytest.raises(Exception, match=r"'weight' has shape \[1000, 10\], expected \[1000, 64\]"):
        rrm_plugin.load_model("dinov2-vitb14-reg")


def test_list_models_names_every_model():
    rows = rrm_plugin.list_models()
    assert [r["model"] for r in rows] == ["digits-vit", "digits-vit-spurious",
                                          "digits-vit-balanced", "digits-vit-stroke",
                                          "digits-vit-stroke-balanced", "vit-b16-imagenet",
                                          "clip-vit-b16",
                                          "dinov2-vitb14-reg", "clip-vit-b32",
                                          "clip-vit-b32-datacomp"]


# --- open_clip (LAION DataComp CLIP ViT-B/32) with its zero-shot head ---------------------------

def open_clip_class_embedding(clip, tokenizer, class_name: str) -> torch.Tensor:
    """open_clip's recipe: mean of the normalised per-template text features, normalised."""
    _, templates = openai_imagenet_prompts()
    with torch.no_grad():
        feats = clip.encode_text(tokenizer([t(class_name) for t in templates]), normalize=True)
    mean = feats.mean(0)
    return mean / mean.norm()


def test_open_clip_by_name_equals_upstream_zero_shot(offline_hub):
    import open_clip

    clip = add_open_clip(offline_hub, DATACOMP_B32_REPO, tiny_open_clip_config())
    model = rrm_plugin.load_model("clip-vit-b32-datacomp")
    assert model.cfg.activation_name == "gelu" and model.cfg.n_classes == 1000
    x = photos("clip-vit-b32-datacomp")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    names, _ = openai_imagenet_prompts()
    chosen = [0, 417, 999]
    classes = torch.stack([open_clip_class_embedding(clip, tokenizer, names[i]) for i in chosen])
    with torch.no_grad():
        image = clip.encode_image(x, normalize=True)
        logits = model(x)
        _, cache = model.run_with_cache(x, names_filter="blocks.1.hook_resid_post")
        stream = clip.visual.transformer(clip.visual._embeds(x))  # open_clip's raw stream
    torch.testing.assert_close(logits[:, chosen], image @ classes.T, **TOL)
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], stream, **TOL)
    assert (classes[0] - classes[1]).abs().max() > 1e-2


def test_open_clip_snapshot_prefers_safetensors_and_falls_back_to_bin(offline_hub):
    repo = "laion/some-open-clip"
    with pytest.raises(CheckpointNotFoundError, match="laion/some-open-clip"):
        open_clip_snapshot(repo)
    add_file(offline_hub, repo, "open_clip_config.json", b"{}")
    with pytest.raises(CheckpointNotFoundError, match="open_clip_pytorch_model.bin"):
        open_clip_snapshot(repo)  # a config without weights is not a model
    add_file(offline_hub, repo, "open_clip_pytorch_model.bin", b"weights")
    assert (open_clip_snapshot(repo) / "open_clip_pytorch_model.bin").is_file()
    add_file(offline_hub, repo, "open_clip_model.safetensors", b"weights")
    folder = open_clip_snapshot(repo)
    assert (folder / "open_clip_model.safetensors").is_file()
