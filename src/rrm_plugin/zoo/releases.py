"""Registry of embedded SAE releases; importing `rrm_plugin` registers them with SAELens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rrm_plugin.saes.registry import register_sae_release
from rrm_plugin.zoo.models import WEIGHTS_DIR


@dataclass(frozen=True)
class SAEReleaseSpec:
    """An SAE release shipped inside the package.

    Args:
        release: Name for `SAE.from_pretrained(release, sae_id)`.
        model_name: The embedded model the SAEs were trained on.
        directory: Folder holding one SAELens-format sub-folder per sae_id.
    """

    release: str
    model_name: str
    directory: Path


SAE_RELEASES: dict[str, SAEReleaseSpec] = {
    "rrm-digits-vit": SAEReleaseSpec(
        release="rrm-digits-vit",
        model_name="digits-vit",
        directory=WEIGHTS_DIR / "rrm-digits-vit",
    ),
}


def register_embedded_releases() -> list[str]:
    """Register every shipped release whose weights are present; returns their names."""
    registered = []
    for spec in SAE_RELEASES.values():
        if spec.directory.is_dir() and any(spec.directory.iterdir()):
            register_sae_release(spec.release, spec.directory, model_name=spec.model_name)
            registered.append(spec.release)
    return registered
