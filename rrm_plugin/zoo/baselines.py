"""The baselines file of a named SAE release: shipped next to its weights, or in the user cache."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sae_lens import SAE
from torch import nn

from rrm_plugin.attribution.baselines import BASELINES_FILENAME, Baselines
from rrm_plugin.errors import MissingFileError, UnknownNameError
from rrm_plugin.zoo.hub_models import cache_dir
from rrm_plugin.zoo.releases import SAE_RELEASES


def cached_baselines_path(release: str) -> Path:
    """Where `rrm baselines` writes by default: into the folder of a release given as a folder,
    else the user cache (never the package's shipped files)."""
    if Path(release).is_dir():
        return Path(release) / BASELINES_FILENAME
    return cache_dir() / "baselines" / f"{release}.safetensors"


def release_baselines_path(release: str) -> Path:
    if release not in SAE_RELEASES:
        raise UnknownNameError(
            f"unknown SAE release {release!r}; shipped releases: {sorted(SAE_RELEASES)}")
    return SAE_RELEASES[release].directory / BASELINES_FILENAME


def load_release_baselines(release: str, saes: Mapping[str, SAE] | None = None, *,
                           model: nn.Module | None = None) -> Baselines:
    """The baselines shipped with an SAE release (checked against `saes` and `model` if given)."""
    path = release_baselines_path(release)
    if not path.is_file():
        raise MissingFileError(
            f"no baselines for release {release!r} at {path}; create them with "
            f"`rrm baselines --release {release}`"
        )
    baselines = Baselines.load(path)
    if saes is not None:
        baselines.check(saes, model=model)
    return baselines
