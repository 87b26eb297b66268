"""Adapter for ViT-Prisma's `HookedViT`: building, initialising and checking inputs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor, nn
from vit_prisma.configs.HookedViTConfig import HookedViTConfig
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.vit import ExtendedViT, ExtendedViTConfig


def build_hooked_vit(cfg: HookedViTConfig, *, seed: int | None = None) -> HookedViT:
    """A `HookedViT` with every weight initialised.

    Workaround for vit-prisma 0.1.4: `HookedViT.init_weights` only initialises `nn.Linear`,
    `nn.Conv2d` and the position embedding; attention, MLP and head weights are left as
    `torch.empty` (arbitrary memory). We initialise all of them here, ViT-style.
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = ExtendedViT(cfg) if isinstance(cfg, ExtendedViTConfig) else HookedViT(cfg)
    init_vit_weights(model)
    return model


@torch.no_grad()
def init_vit_weights(model: HookedViT, *, std: float = 0.02) -> None:
    """Truncated-normal weights, zero biases, unit LayerNorm gains (as timm's ViT)."""
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("b") or leaf == "bias":
            nn.init.zeros_(param)
        elif (leaf == "w" and ".ln" in f".{name}") or leaf == "logit_scale":
            nn.init.ones_(param)  # LayerNorm gains; a CLIP-style head's scale (cosine logits)
        elif name == "embed.proj.weight":
            fan_in = math.prod(param.shape[1:])
            nn.init.trunc_normal_(param, std=1 / math.sqrt(fan_in))
        else:
            nn.init.trunc_normal_(param, std=std)


# Pixels in [0, 1], normalised by any usual mean/std, stay within about +-3; 0..255 images
# (the common mistake) go far beyond.
MAX_ABS_PIXEL = 10.0


def input_check_for(model: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """The input validation for a host model (`check_images` for a HookedViT), or None where the
    host has none of ours."""
    if isinstance(model, HookedViT):
        return lambda images: check_images(model, images)
    return None


def check_images(
    model: HookedViT, images: Tensor
) -> Float[Tensor, "batch channels height width"]:
    """Reject images the model cannot take, naming what was wrong and what was expected."""
    cfg = model.cfg
    expected = f"[batch, {cfg.n_channels}, {cfg.image_size}, {cfg.image_size}]"
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape {expected}, got {type(images)}")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be a floating-point tensor (values in [0, 1]), got dtype {images.dtype}"
        )
    if images.ndim != 4:
        raise RRMUserError(f"images must have shape {expected}, got {list(images.shape)}")
    if images.shape[1] != cfg.n_channels:
        raise RRMUserError(
            f"images have {images.shape[1]} channels, model expects {cfg.n_channels} "
            f"(shape {expected}, channels first)"
        )
    if tuple(images.shape[2:]) != (cfg.image_size, cfg.image_size):
        raise RRMUserError(
            f"images are {images.shape[2]}x{images.shape[3]} pixels, model expects "
            f"{cfg.image_size}x{cfg.image_size} (shape {expected})"
        )
    weights_dtype = next(model.parameters()).dtype
    if images.dtype != weights_dtype:
        raise TypeError(f"images are {images.dtype} but the model's weights are {weights_dtype}: "
                        f"convert them with images.to({weights_dtype})")
    if not torch.isfinite(images).all():
        n_bad = int((~torch.isfinite(images)).sum())
        raise RRMUserError(f"images contain {n_bad} NaN/inf values; expected finite pixels")
    largest = float(images.detach().abs().max()) if images.numel() else 0.0
    if largest > MAX_ABS_PIXEL:
        raise RRMUserError(
            f"images have values up to {largest:.4g}: expected pixels in [0, 1] (or normalised "
            "as the model's preprocessing does, within a few units); divide 0..255 images by 255")
    return images


def with_image_size(model: HookedViT, image_size: int) -> HookedViT:
    """The same ViT at another input size: a new model of the same config at `image_size`,
    with the patch grid of its position embedding resampled (bicubic) by timm's
    `resample_abs_pos_embed`, the class token's row kept; every other weight is shared by
    value. E.g. a 224 px ViT-B/16 (197 tokens) at 448 px has 785 tokens.
    """
    from timm.layers import resample_abs_pos_embed

    cfg = model.cfg
    if image_size < cfg.patch_size or image_size % cfg.patch_size:
        raise RRMUserError(f"image_size must be a positive multiple of the patch size "
                           f"{cfg.patch_size}, got {image_size}")
    prefix = int(getattr(cfg, "classification_type", "cls") == "cls")
    old_grid, new_grid = cfg.image_size // cfg.patch_size, image_size // cfg.patch_size
    W_pos = model.pos_embed.W_pos.detach()
    if W_pos.shape[0] != prefix + old_grid**2:
        raise RRMUserError(f"position embedding has {W_pos.shape[0]} rows, expected "
                           f"{prefix} + {old_grid}x{old_grid} for {cfg.image_size} px")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["pos_embed.W_pos"] = resample_abs_pos_embed(
        W_pos[None], [new_grid, new_grid], [old_grid, old_grid], num_prefix_tokens=prefix)[0]
    resized = build_hooked_vit(dataclasses.replace(cfg, image_size=image_size))
    resized.load_state_dict(state)
    resized.to(W_pos.device).train(model.training)
    return resized
