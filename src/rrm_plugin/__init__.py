"""rrm-plugin: residual replacement model circuits and class-embedding-space analysis for ViTs.

Importing the package registers the embedded SAE releases (e.g. `rrm-digits-vit`) with SAELens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from sae_lens import SAE
from torch import nn

from rrm_plugin.data import load_test_set
from rrm_plugin.replacement.interventions import FeatureIntervention, intervention_hooks
from rrm_plugin.replacement.splice import replacement as _replacement
from rrm_plugin.saes.registry import load_saes, register_sae_release
from rrm_plugin.zoo.models import load_model
from rrm_plugin.zoo.releases import register_embedded_releases

__version__ = "0.1.0"

register_embedded_releases()


@contextmanager
def replacement(
    model: nn.Module,
    saes: Mapping[str, SAE],
    *,
    keep_error: bool = False,
    hook_names: Sequence[str] | None = None,
) -> Iterator[nn.Module]:
    """Splice SAEs into a HookedViT (or TransformerLens model) while the block runs.

    See `rrm_plugin.replacement.splice.replacement`. For a HookedViT, images are checked (size,
    channels, dtype, finite values) before every forward pass.
    """
    from vit_prisma.models.base_vit import HookedViT

    from rrm_plugin.hosts.prisma import check_images

    check = (lambda images: check_images(model, images)) if isinstance(model, HookedViT) else None
    with _replacement(
        model, saes, keep_error=keep_error, hook_names=hook_names, check_input=check
    ) as spliced:
        yield spliced


__all__ = [
    "FeatureIntervention",
    "intervention_hooks",
    "load_model",
    "load_saes",
    "load_test_set",
    "register_sae_release",
    "replacement",
]
