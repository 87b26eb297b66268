"""Adapters for host frameworks (ViT-Prisma, TransformerLens)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


def input_check_for(model: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """The input validation for a host model, or None where the host has none of ours."""
    from vit_prisma.models.base_vit import HookedViT

    from rrm_plugin.hosts.prisma import check_images

    if isinstance(model, HookedViT):
        return lambda images: check_images(model, images)
    return None
