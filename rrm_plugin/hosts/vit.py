"""`ExtendedViT`: ViT-Prisma's `HookedViT` plus what vit-prisma 0.1.4 cannot represent.

The paper's backbones need three things `HookedViT` 0.1.4 lacks, added here by subclassing (never
by patching vit-prisma):

- register tokens (DINOv2 with registers): extra tokens after CLS with no position embedding, so
  every hook point (`blocks.{l}.hook_resid_post`, attention patterns, ...) sees
  `1 + n_registers + n_patches` tokens in the order [CLS, registers, patches];
- the `quick_gelu` MLP activation of OpenAI CLIP (`x * sigmoid(1.702 x)`);
- heads other than a linear map of one pooled token: DINOv2's linear classifier on
  [CLS, mean of patch tokens] and CLIP's zero-shot head (cosine similarity of the L2-normalised
  image embedding with the class text embeddings, times the logit scale).

LayerScale is not a module here: converters fold it into `W_O`, `b_O`, `W_out` and `b_out`, which is
exact. With the default extras an `ExtendedViT` computes exactly what `HookedViT` computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from vit_prisma.configs.HookedViTConfig import HookedViTConfig
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.errors import RRMUserError

HeadType = Literal["linear", "cls_mean_patch", "normalized_projection"]
HEAD_TYPES: tuple[str, ...] = ("linear", "cls_mean_patch", "normalized_projection")


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's activation."""
    return x * torch.sigmoid(1.702 * x)


# Activations vit-prisma 0.1.4's MLP does not know; its MLP is built with "gelu", then given these.
EXTRA_ACTIVATIONS = {"quick_gelu": quick_gelu}


@dataclass
class ExtendedViTConfig(HookedViTConfig):
    """`HookedViTConfig` with the extras of `ExtendedViT`.

    Args:
        n_registers: Register tokens inserted after CLS (no position embedding).
        head_type: `"linear"` (vit-prisma's head on the pooled token), `"cls_mean_patch"` (a linear
            classifier on [CLS, mean of the patch tokens], registers excluded) or
            `"normalized_projection"` (CLIP zero-shot head on the CLS token).
        projection_dim: Width of the image embedding (`"normalized_projection"` only).
    """

    n_registers: int = 0
    head_type: str = "linear"
    projection_dim: int | None = None

    def __post_init__(self) -> None:
        if self.head_type not in HEAD_TYPES:
            raise RRMUserError(f"head_type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        if self.head_type == "normalized_projection" and not self.projection_dim:
            raise RRMUserError("head_type 'normalized_projection' needs projection_dim")
        if self.head_type != "linear" and self.classification_type != "cls":
            raise RRMUserError(f"head_type {self.head_type!r} reads the CLS token: "
                               "classification_type must be 'cls'")
        if self.n_registers < 0:
            raise RRMUserError(f"n_registers must be >= 0, got {self.n_registers}")


class ClsMeanPatchHead(nn.Module):
    """DINOv2's linear classifier: `W_cls^T x_cls + W_patch^T mean(x_patches) + b`.

    `W_H = W_cls + W_patch` is the class embedding of a single token (the head's output when every
    token equals it); the class lens reads it.
    """

    def __init__(self, cfg: ExtendedViTConfig):
        super().__init__()
        self.W_cls = nn.Parameter(torch.zeros(cfg.d_model, cfg.n_classes))
        self.W_patch = nn.Parameter(torch.zeros(cfg.d_model, cfg.n_classes))
        self.b_H = nn.Parameter(torch.zeros(cfg.n_classes))

    @property
    def W_H(self) -> Float[Tensor, "d_model n_classes"]:
        return self.W_cls + self.W_patch

    def forward(self, pooled: Float[Tensor, "batch two d_model"]) -> Float[Tensor, "batch c"]:
        return pooled[:, 0] @ self.W_cls + pooled[:, 1] @ self.W_patch + self.b_H


class NormalizedProjectionHead(nn.Module):
    """CLIP zero-shot head: `logit_scale * normalize(x W_proj) . class_embeddings`.

    `class_embeddings` columns are the unit-norm text embeddings of the classes. `W_H` is
    `logit_scale * W_proj class_embeddings`: the head up to the positive factor `1 / |x W_proj|`,
    which does not change any class ranking; the class lens reads it.
    """

    def __init__(self, cfg: ExtendedViTConfig):
        super().__init__()
        self.W_proj = nn.Parameter(torch.zeros(cfg.d_model, cfg.projection_dim))
        self.class_embeddings = nn.Parameter(torch.zeros(cfg.projection_dim, cfg.n_classes))
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.register_buffer("b_H", torch.zeros(cfg.n_classes), persistent=False)

    @property
    def W_H(self) -> Float[Tensor, "d_model n_classes"]:
        return self.logit_scale * self.W_proj @ self.class_embeddings

    def forward(self, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch c"]:
        embedding = F.normalize(x @ self.W_proj, dim=-1)
        return self.logit_scale * embedding @ self.class_embeddings


class ExtendedViT(HookedViT):
    """A `HookedViT` with registers, extra activations and the heads above (see module doc)."""

    def __init__(self, cfg: ExtendedViTConfig | HookedViTConfig, move_to_device: bool = True):
        if not isinstance(cfg, ExtendedViTConfig):
            cfg = ExtendedViTConfig(**{k: v for k, v in vars(cfg).items()})
        activation = cfg.activation_name
        if activation in EXTRA_ACTIVATIONS:
            cfg.activation_name = "gelu"  # vit-prisma's MLP rejects names it does not know
        try:
            super().__init__(cfg, move_to_device)
        finally:
            cfg.activation_name = activation
        if activation in EXTRA_ACTIVATIONS:
            for block in self.blocks:
                block.mlp.act_fn = EXTRA_ACTIVATIONS[activation]
        if cfg.n_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.n_registers, cfg.d_model))
        if cfg.head_type == "cls_mean_patch":
            self.head = ClsMeanPatchHead(cfg)
        elif cfg.head_type == "normalized_projection":
            self.head = NormalizedProjectionHead(cfg)

    @property
    def n_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS (if any) and the registers."""
        return int(self.cfg.classification_type == "cls") + self.cfg.n_registers

    def pool(self, normed: Float[Tensor, "batch pos d_model"]) -> Tensor:
        """What the head reads from the final-LayerNormed tokens."""
        cfg = self.cfg
        if cfg.head_type == "cls_mean_patch":
            patches = normed[:, self.n_prefix_tokens:].mean(dim=1)
            return torch.stack([normed[:, 0], patches], dim=1)
        if cfg.classification_type == "gaap":
            return normed.mean(dim=1)
        return normed[:, 0]

    def forward(self, input: Float[Tensor, "batch channels height width"],
                stop_at_layer: int | None = None) -> Tensor:
        batch = input.shape[0]
        residual = self.hook_embed(self.embed(input))
        if self.cfg.classification_type == "cls":
            residual = torch.cat([self.cls_token.expand(batch, -1, -1), residual], dim=1)
        residual = residual + self.hook_pos_embed(self.pos_embed(input))
        if self.cfg.n_registers:
            registers = self.register_tokens.expand(batch, -1, -1)
            residual = torch.cat([residual[:, :1], registers, residual[:, 1:]], dim=1)
        if self.cfg.layer_norm_pre:
            residual = self.hook_ln_pre(self.ln_pre(residual))
        for block in self.blocks[:stop_at_layer]:
            residual = block(residual)
        if stop_at_layer is not None:
            return residual
        pooled = self.pool(self.ln_final(residual))
        return pooled if self.cfg.return_type == "pre_logits" else self.head(pooled)


def n_prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patches of any HookedViT (CLS and registers)."""
    if isinstance(model, ExtendedViT):
        return model.n_prefix_tokens
    return int(model.cfg.classification_type == "cls")
