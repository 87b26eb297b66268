"""Convert upstream ViTs (timm, HF CLIP, HF DINOv2 with registers, open_clip) to `ExtendedViT`.

Each converter takes an instantiated upstream model (pretrained or randomly initialised) and returns
an `ExtendedViT` in eval mode that computes the same logits. timm and CLIP weights go through
vit-prisma's own converters (`convert_timm_weights`, `convert_clip_weights`; open_clip's names are
mapped to HF CLIP's first); DINOv2 with registers and LayerScale has none, so it is mapped here
(LayerScale folded into the output projections).
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn
from vit_prisma.prisma_tools.loading_from_pretrained import (
    convert_clip_weights,
    convert_timm_weights,
)

from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.vit import ExtendedViT, ExtendedViTConfig


class UnsupportedArchitectureError(RRMUserError):
    """An upstream model with a feature the converter cannot represent exactly."""


def _build(cfg: ExtendedViTConfig, state: dict[str, Tensor]) -> ExtendedViT:
    with torch.device("meta"):
        skeleton = ExtendedViT(cfg)
    expected = skeleton.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise UnsupportedArchitectureError(
            f"converted state dict does not fit ExtendedViT: missing {missing}, unexpected {extra}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UnsupportedArchitectureError(
                f"converted tensor {name!r} has shape {list(state[name].shape)}, "
                f"expected {list(tensor.shape)}")
    model = ExtendedViT(cfg)
    model.load_state_dict({k: v.detach().float().cpu().contiguous() for k, v in state.items()})
    return model.eval()


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise UnsupportedArchitectureError(f"cannot convert exactly: {what}")


def _side(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


# --- timm VisionTransformer -------------------------------------------------------------------

def timm_vit_config(model: nn.Module, *, model_name: str) -> ExtendedViTConfig:
    """The `ExtendedViTConfig` of a timm `VisionTransformer` (plain pre-LN ViT, CLS head)."""
    block = model.blocks[0]
    _require(getattr(model, "cls_token", None) is not None, "timm ViT without a class token")
    _require(getattr(model, "num_reg_tokens", 0) == 0, "timm ViT with register tokens")
    _require(model.global_pool == "token", f"timm global_pool {model.global_pool!r} (need 'token')")
    _require(isinstance(model.fc_norm, nn.Identity), "timm ViT with fc_norm")
    _require(isinstance(model.norm_pre, nn.Identity), "timm ViT with norm_pre")
    _require(isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity),
             "timm ViT with LayerScale")
    _require(isinstance(block.attn.q_norm, nn.Identity), "timm ViT with q/k norm")
    _require(not getattr(model, "dynamic_img_size", False), "timm ViT with dynamic_img_size")
    act = type(block.mlp.act).__name__
    _require(act == "GELU" and getattr(block.mlp.act, "approximate", "none") == "none",
             f"timm MLP activation {act} (need exact GELU)")
    n_heads = block.attn.num_heads
    return ExtendedViTConfig(
        model_name=model_name, n_layers=len(model.blocks), d_model=model.embed_dim,
        n_heads=n_heads, d_head=model.embed_dim // n_heads, d_mlp=block.mlp.fc1.out_features,
        activation_name="gelu", eps=model.norm.eps, patch_size=_side(model.patch_embed.patch_size),
        image_size=_side(model.patch_embed.img_size), n_channels=model.patch_embed.proj.in_channels,
        n_classes=model.num_classes, classification_type="cls", return_type="class_logits",
        normalization_type="LN", use_wandb=False,
    )


def convert_timm_vit(model: nn.Module, *, model_name: str = "timm-vit") -> ExtendedViT:
    """A timm `VisionTransformer` (e.g. `vit_base_patch16_224`) as an `ExtendedViT`."""
    cfg = timm_vit_config(model, model_name=model_name)
    return _build(cfg, convert_timm_weights(model.state_dict(), cfg))


def _zero_shot_head(
    state: dict[str, Tensor], class_embeddings: Tensor, logit_scale: float
) -> dict[str, Tensor]:
    """Swap the linear head vit-prisma's CLIP converter writes for the zero-shot head."""
    state["head.W_proj"] = state.pop("head.W_H")  # the visual projection
    del state["head.b_H"]
    state["head.class_embeddings"] = torch.nn.functional.normalize(class_embeddings, dim=-1).T
    state["head.logit_scale"] = torch.tensor(float(logit_scale))
    return state


# --- Hugging Face CLIP ------------------------------------------------------------------------

def clip_vision_config(clip: nn.Module, *, model_name: str, n_classes: int) -> ExtendedViTConfig:
    vc = clip.vision_model.config
    return ExtendedViTConfig(
        model_name=model_name, n_layers=vc.num_hidden_layers, d_model=vc.hidden_size,
        n_heads=vc.num_attention_heads, d_head=vc.hidden_size // vc.num_attention_heads,
        d_mlp=vc.intermediate_size, activation_name=vc.hidden_act, eps=vc.layer_norm_eps,
        patch_size=vc.patch_size, image_size=vc.image_size, n_channels=vc.num_channels,
        n_classes=n_classes, classification_type="cls", return_type="class_logits",
        normalization_type="LN", layer_norm_pre=True, head_type="normalized_projection",
        projection_dim=clip.visual_projection.out_features, use_wandb=False,
    )


def convert_hf_clip(
    clip: nn.Module,
    class_embeddings: Float[Tensor, "n_classes d_proj"],
    *,
    logit_scale: float = 1.0,
    model_name: str = "clip",
) -> ExtendedViT:
    """A Hugging Face `CLIPModel`'s vision tower with a zero-shot head as an `ExtendedViT`.

    Logits are `logit_scale * cos(image embedding, class embedding)`; the class embeddings are
    normalised here. The RRM authors use `logit_scale = 1` (plain cosine similarity).
    """
    vc = clip.vision_model.config
    _require(vc.hidden_act in ("quick_gelu", "gelu"), f"CLIP activation {vc.hidden_act!r}")
    class_embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    d_proj = clip.visual_projection.out_features
    if class_embeddings.ndim != 2 or class_embeddings.shape[1] != d_proj:
        raise RRMUserError(f"class_embeddings must be [n_classes, {d_proj}], "
                           f"got {list(class_embeddings.shape)}")
    cfg = clip_vision_config(clip, model_name=model_name, n_classes=len(class_embeddings))
    state = convert_clip_weights(clip.vision_model.state_dict(),
                                 clip.visual_projection.state_dict(), cfg)
    return _build(cfg, _zero_shot_head(state, class_embeddings, logit_scale))


# --- Hugging Face DINOv2 with registers ------------------------------------------------------

def dinov2_config(
    backbone: nn.Module, *, model_name: str, image_size: int, n_classes: int
) -> ExtendedViTConfig:
    c = backbone.config
    _require(not getattr(c, "use_swiglu_ffn", False), "DINOv2 with a SwiGLU MLP (giant)")
    _require(c.hidden_act == "gelu", f"DINOv2 activation {c.hidden_act!r}")
    _require(getattr(c, "qkv_bias", True), "DINOv2 without query/key/value biases")
    _require(image_size % c.patch_size == 0,
             f"image size {image_size} is not a multiple of the patch size {c.patch_size}")
    return ExtendedViTConfig(
        model_name=model_name, n_layers=c.num_hidden_layers, d_model=c.hidden_size,
        n_heads=c.num_attention_heads, d_head=c.hidden_size // c.num_attention_heads,
        d_mlp=backbone.encoder.layer[0].mlp.fc1.out_features, activation_name="gelu",
        eps=c.layer_norm_eps, patch_size=c.patch_size, image_size=image_size,
        n_channels=c.num_channels, n_classes=n_classes, classification_type="cls",
        return_type="class_logits", normalization_type="LN",
        n_registers=c.num_register_tokens, head_type="cls_mean_patch", use_wandb=False,
    )


def _heads(w: Tensor, n_heads: int, pattern: str) -> Tensor:
    return einops.rearrange(w, pattern, h=n_heads)


def convert_hf_dinov2(
    backbone: nn.Module,
    head: Float[Tensor, "n_classes two_d_model"] | nn.Linear,
    head_bias: Float[Tensor, " n_classes"] | None = None,
    *,
    image_size: int = 224,
    model_name: str = "dinov2",
) -> ExtendedViT:
    """A Hugging Face `Dinov2WithRegistersModel` plus a linear head on [CLS, mean patch].

    The position embedding is interpolated to `image_size` once, with the upstream model's own
    `interpolate_pos_encoding`, so the converted model equals the upstream one at that size.
    """
    if isinstance(head, nn.Linear):
        head, head_bias = head.weight, head.bias
    d = backbone.config.hidden_size
    if head.ndim != 2 or head.shape[1] != 2 * d:
        raise RRMUserError(
            f"DINOv2 linear head must be [n_classes, {2 * d}], got {list(head.shape)}")
    cfg = dinov2_config(backbone, model_name=model_name, image_size=image_size,
                        n_classes=head.shape[0])
    sd = {k: v.detach() for k, v in backbone.state_dict().items()}
    emb = backbone.embeddings
    n_patches = (image_size // cfg.patch_size) ** 2
    with torch.no_grad():
        dummy = torch.zeros(1, n_patches + 1, d)
        pos = emb.interpolate_pos_encoding(dummy, image_size, image_size)[0]
    n = cfg.n_heads
    state = {
        "cls_token": sd["embeddings.cls_token"],
        "register_tokens": sd["embeddings.register_tokens"],
        "pos_embed.W_pos": pos,
        "embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "ln_final.w": sd["layernorm.weight"],
        "ln_final.b": sd["layernorm.bias"],
        "head.W_cls": head[:, :d].T,
        "head.W_patch": head[:, d:].T,
        "head.b_H": torch.zeros(head.shape[0]) if head_bias is None else head_bias,
    }
    for layer in range(cfg.n_layers):
        old, new = f"encoder.layer.{layer}", f"blocks.{layer}"
        ls1, ls2 = sd[f"{old}.layer_scale1.lambda1"], sd[f"{old}.layer_scale2.lambda1"]
        state[f"{new}.ln1.w"], state[f"{new}.ln1.b"] = (sd[f"{old}.norm1.weight"],
                                                        sd[f"{old}.norm1.bias"])
        state[f"{new}.ln2.w"], state[f"{new}.ln2.b"] = (sd[f"{old}.norm2.weight"],
                                                        sd[f"{old}.norm2.bias"])
        for q in ("q", "k", "v"):
            Q = q.upper()
            state[f"{new}.attn.W_{Q}"] = _heads(sd[f"{old}.attention.{q}_proj.weight"], n,
                                                "(h dh) d -> h d dh")
            state[f"{new}.attn.b_{Q}"] = _heads(sd[f"{old}.attention.{q}_proj.bias"], n,
                                                "(h dh) -> h dh")
        # LayerScale multiplies the sublayer output per channel: fold it into the output maps.
        state[f"{new}.attn.W_O"] = _heads(sd[f"{old}.attention.o_proj.weight"] * ls1[:, None], n,
                                          "d (h dh) -> h dh d")
        state[f"{new}.attn.b_O"] = sd[f"{old}.attention.o_proj.bias"] * ls1
        state[f"{new}.mlp.W_in"] = sd[f"{old}.mlp.fc1.weight"].T
        state[f"{new}.mlp.b_in"] = sd[f"{old}.mlp.fc1.bias"]
        state[f"{new}.mlp.W_out"] = (sd[f"{old}.mlp.fc2.weight"] * ls2[:, None]).T
        state[f"{new}.mlp.b_out"] = sd[f"{old}.mlp.fc2.bias"] * ls2
    return _build(cfg, state)


# --- open_clip --------------------------------------------------------------------------------

def _open_clip_block_checks(block: nn.Module, layer: int) -> None:
    where = f"open_clip resblock {layer}"
    _require(type(block).__name__ == "ResidualAttentionBlock",
             f"{where} is a {type(block).__name__} (need ResidualAttentionBlock)")
    _require(isinstance(block.attn, nn.MultiheadAttention), f"{where}: custom attention")
    _require(isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity),
             f"{where} with LayerScale")
    _require(not hasattr(block, "ln_1_kv"), f"{where} with cross attention")
    _require(list(block.mlp._modules) == ["c_fc", "gelu", "c_proj"],
             f"{where}: MLP layers {list(block.mlp._modules)} (need c_fc, gelu, c_proj)")
    _require(block.attn.in_proj_bias is not None, f"{where} without q/k/v biases")


def open_clip_activation(visual: nn.Module) -> str:
    """`"gelu"` (nn.GELU) or `"quick_gelu"` (open_clip's QuickGELU) of every MLP."""
    names = {type(b.mlp.gelu).__name__ for b in visual.transformer.resblocks}
    approx = {getattr(b.mlp.gelu, "approximate", "none") for b in visual.transformer.resblocks}
    if names == {"GELU"} and approx == {"none"}:
        return "gelu"
    if names == {"QuickGELU"}:
        return "quick_gelu"
    raise UnsupportedArchitectureError(f"cannot convert exactly: open_clip MLP activation {names}")


def open_clip_vision_config(
    visual: nn.Module, *, model_name: str, n_classes: int
) -> ExtendedViTConfig:
    """The `ExtendedViTConfig` of an open_clip `VisionTransformer` (CLS pooling, projection)."""
    _require(type(visual).__name__ == "VisionTransformer",
             f"open_clip vision tower {type(visual).__name__} (need VisionTransformer)")
    _require(visual.attn_pool is None, "open_clip attentional pooling")
    _require(visual.pool_type == "tok", f"open_clip pool_type {visual.pool_type!r} (need 'tok')")
    _require(not isinstance(visual.ln_pre, nn.Identity), "open_clip without ln_pre")
    _require(visual.proj is not None, "open_clip vision tower without a projection")
    for layer, block in enumerate(visual.transformer.resblocks):
        _open_clip_block_checks(block, layer)
    block = visual.transformer.resblocks[0]
    d_model = visual.class_embedding.shape[0]
    n_heads = block.attn.num_heads
    return ExtendedViTConfig(
        model_name=model_name, n_layers=len(visual.transformer.resblocks), d_model=d_model,
        n_heads=n_heads, d_head=d_model // n_heads, d_mlp=block.mlp.c_fc.out_features,
        activation_name=open_clip_activation(visual), eps=visual.ln_pre.eps,
        patch_size=_side(visual.patch_size), image_size=_side(visual.image_size),
        n_channels=visual.conv1.in_channels, n_classes=n_classes, classification_type="cls",
        return_type="class_logits", normalization_type="LN", layer_norm_pre=True,
        head_type="normalized_projection", projection_dim=visual.proj.shape[1], use_wandb=False,
    )


def open_clip_to_hf_names(visual: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """An open_clip vision tower's weights under Hugging Face `CLIPVisionTransformer` names.

    Returns `(vision_state, projection_state)`, the two inputs of vit-prisma's
    `convert_clip_weights`; open_clip's fused q/k/v projection is split as HF stores it.
    """
    sd = {k: v.detach() for k, v in visual.state_dict().items()}
    hf = {
        "embeddings.class_embedding": sd["class_embedding"],
        "embeddings.position_embedding.weight": sd["positional_embedding"],
        "embeddings.patch_embedding.weight": sd["conv1.weight"],
        "pre_layrnorm.weight": sd["ln_pre.weight"],  # sic: HF's attribute name
        "pre_layrnorm.bias": sd["ln_pre.bias"],
        "post_layernorm.weight": sd["ln_post.weight"],
        "post_layernorm.bias": sd["ln_post.bias"],
    }
    for layer in range(len(visual.transformer.resblocks)):
        old, new = f"transformer.resblocks.{layer}", f"encoder.layers.{layer}"
        q, k, v = sd[f"{old}.attn.in_proj_weight"].chunk(3)
        bq, bk, bv = sd[f"{old}.attn.in_proj_bias"].chunk(3)
        hf |= {
            f"{new}.layer_norm1.weight": sd[f"{old}.ln_1.weight"],
            f"{new}.layer_norm1.bias": sd[f"{old}.ln_1.bias"],
            f"{new}.layer_norm2.weight": sd[f"{old}.ln_2.weight"],
            f"{new}.layer_norm2.bias": sd[f"{old}.ln_2.bias"],
            f"{new}.self_attn.q_proj.weight": q, f"{new}.self_attn.q_proj.bias": bq,
            f"{new}.self_attn.k_proj.weight": k, f"{new}.self_attn.k_proj.bias": bk,
            f"{new}.self_attn.v_proj.weight": v, f"{new}.self_attn.v_proj.bias": bv,
            f"{new}.self_attn.out_proj.weight": sd[f"{old}.attn.out_proj.weight"],
            f"{new}.self_attn.out_proj.bias": sd[f"{old}.attn.out_proj.bias"],
            f"{new}.mlp.fc1.weight": sd[f"{old}.mlp.c_fc.weight"],
            f"{new}.mlp.fc1.bias": sd[f"{old}.mlp.c_fc.bias"],
            f"{new}.mlp.fc2.weight": sd[f"{old}.mlp.c_proj.weight"],
            f"{new}.mlp.fc2.bias": sd[f"{old}.mlp.c_proj.bias"],
        }
    # open_clip projects with `pooled @ proj`; HF's visual_projection is a Linear (weight = proj^T).
    return hf, {"weight": sd["proj"].T}


def convert_open_clip(
    clip: nn.Module,
    class_embeddings: Float[Tensor, "n_classes d_proj"],
    *,
    logit_scale: float = 1.0,
    model_name: str = "open-clip",
) -> ExtendedViT:
    """An open_clip `CLIP` model's vision tower with a zero-shot head as an `ExtendedViT`.

    The residual stream is open_clip's own, unprocessed (no weight centring or LayerNorm folding),
    so `blocks.{l}.hook_resid_post` is the output of `visual.transformer.resblocks[l]`. Logits are
    `logit_scale * cos(image embedding, class embedding)`.
    """
    visual = clip.visual
    class_embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    d_proj = visual.proj.shape[1] if visual.proj is not None else None
    if class_embeddings.ndim != 2 or class_embeddings.shape[1] != d_proj:
        raise RRMUserError(f"class_embeddings must be [n_classes, {d_proj}], "
                           f"got {list(class_embeddings.shape)}")
    cfg = open_clip_vision_config(visual, model_name=model_name, n_classes=len(class_embeddings))
    state = convert_clip_weights(*open_clip_to_hf_names(visual), cfg)
    return _build(cfg, _zero_shot_head(state, class_embeddings, logit_scale))
