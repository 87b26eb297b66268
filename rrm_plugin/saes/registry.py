"""SAE releases on local disk, registered with SAELens so `SAE.from_pretrained` finds them offline.

SAELens resolves a release through two explicit registries: its pretrained-SAE directory (release
-> repo_id, sae_id -> folder) and `NAMED_PRETRAINED_SAE_LOADERS` (how to read a folder). We add a
loader that reads SAELens's own on-disk format (its `SAE_CFG_FILENAME` + `SAE_WEIGHTS_FILENAME`,
as `SAE.save_model` writes them) from a local folder, and directory entries whose `repo_id` is
that folder. Both registries are plain dicts in SAELens 6.x; they change only when a `register_*`
function here or in `rrm_plugin.zoo.releases` is called, never on import. The loader is ours
rather than SAELens's `sae_lens_disk_loader` for its checks: a corrupt or incomplete file is
named (`CorruptFileError`), and tensor names and shapes are verified against the config before
SAELens builds the SAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.loading.pretrained_sae_loaders import (
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
    NAMED_PRETRAINED_SAE_LOADERS,
)
from sae_lens.loading.pretrained_saes_directory import (
    PretrainedSAELookup,
    get_pretrained_saes_directory,
)

from rrm_plugin.errors import MissingFileError, UnknownNameError
from rrm_plugin.io import CorruptFileError, read_json, read_tensors
from rrm_plugin.provenance import check_release_provenance

LOCAL_LOADER_NAME = "rrm_plugin_local"

_LOCAL_RELEASES: dict[str, Path] = {}


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    return {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}


def read_local_sae_config(
    repo_id: str,
    folder_name: str,
    device: str | None = None,
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAELens config getter for a local folder (`repo_id` is the release folder)."""
    del force_download  # nothing is downloaded
    cfg = read_json(Path(repo_id) / folder_name / SAE_CFG_FILENAME)
    for key in ("architecture", "d_in", "d_sae"):
        if key not in cfg:
            raise CorruptFileError(
                f"{Path(repo_id) / folder_name / SAE_CFG_FILENAME} lacks {key!r}")
    if device is not None:
        cfg["device"] = device
    cfg.update(cfg_overrides or {})
    return cfg


def load_local_sae_components(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """SAELens loader for a local folder; verifies tensor names and shapes against the config."""
    cfg = read_local_sae_config(repo_id, folder_name, device, force_download, cfg_overrides)
    state = read_tensors(
        Path(repo_id) / folder_name / SAE_WEIGHTS_FILENAME, expected_shapes=_expected_shapes(cfg)
    )
    return cfg, {k: v.to(device) for k, v in state.items()}, None


def register_loader(name: str, *, loader, config_getter) -> None:
    """Add a loader (and its config getter) to SAELens's loader registry under `name`."""
    NAMED_PRETRAINED_SAE_LOADERS[name] = loader
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS[name] = config_getter


def list_sae_ids(directory: Path) -> list[str]:
    """The sae_ids (sub-folders with a `cfg.json`) of a release folder, in layer order."""
    ids = [p.name for p in Path(directory).iterdir() if (p / SAE_CFG_FILENAME).is_file()]
    return sorted(ids, key=hook_sort_key)


def hook_sort_key(hook_name: str) -> tuple:
    """Sort key of hook names in layer order, numeric parts as numbers (blocks.2 < blocks.10)."""
    parts = hook_name.split(".")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def register_sae_release(release: str, directory: Path, *, model_name: str) -> list[str]:
    """Make `SAE.from_pretrained(release, sae_id)` read the SAEs saved under `directory`."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise MissingFileError(f"SAE release folder {directory} does not exist")
    sae_ids = list_sae_ids(directory)
    if not sae_ids:
        raise MissingFileError(f"no SAEs (sub-folders with {SAE_CFG_FILENAME}) in {directory}")
    register_loader(LOCAL_LOADER_NAME, loader=load_local_sae_components,
                    config_getter=read_local_sae_config)
    get_pretrained_saes_directory()[release] = PretrainedSAELookup(
        release=release,
        repo_id=str(directory),
        model=model_name,
        conversion_func=LOCAL_LOADER_NAME,
        saes_map={sae_id: sae_id for sae_id in sae_ids},
        expected_var_explained={},
        expected_l0={},
        neuronpedia_id={},
        norm_scaling_factor={},
        config_overrides=None,
    )
    _LOCAL_RELEASES[release] = directory
    return sae_ids


def local_release_directory(release: str) -> Path | None:
    """The folder of a release registered from local disk, else None."""
    return _LOCAL_RELEASES.get(release)


def _converter(release: str, overrides: dict[str, Any]):
    """The release's registered loader, with `overrides` added to its config overrides."""
    from sae_lens.loading.pretrained_sae_loaders import get_conversion_loader_name

    loader = NAMED_PRETRAINED_SAE_LOADERS[get_conversion_loader_name(release)]

    def converter(repo_id, folder_name, device="cpu", force_download=False, cfg_overrides=None):
        return loader(repo_id, folder_name, device=device, force_download=force_download,
                      cfg_overrides={**(cfg_overrides or {}), **overrides})

    return converter


def load_saes(
    release: str,
    *,
    sae_ids: list[str] | None = None,
    device: str = "cpu",
    model=None,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, SAE]:
    """All SAEs of a registered release as `{hook_name: SAE}`, through `SAE.from_pretrained`.

    Named releases are registered by `rrm_plugin.zoo.releases` (its `load_saes` registers them
    first). With `model`, a local release's recorded provenance is checked: SAEs trained on other
    model weights raise `ProvenanceError`. `cfg_overrides` go to the release's loader for every SAE
    (e.g. `{"normalize_activations": "none"}`; the RRM authors' loader takes `{"epoch": n}`, the
    ViT-Prisma loader `{"activation_fn_str": ...}` where the config leaves it out).
    """
    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise UnknownNameError(
            f"unknown SAE release {release!r}; releases registered by rrm_plugin: "
            f"{sorted(_LOCAL_RELEASES)}"
        )
    available = list(directory[release].saes_map)
    wanted = available if sae_ids is None else list(sae_ids)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise UnknownNameError(
            f"unknown sae_id(s) {unknown} in release {release!r}; available: {available}"
        )
    converter = _converter(release, dict(cfg_overrides)) if cfg_overrides else None
    saes = {}
    for sae_id in wanted:
        sae = SAE.from_pretrained(release, sae_id, device=device, converter=converter)
        saes[sae.cfg.metadata.hook_name or sae_id] = sae.eval()
    if release in _LOCAL_RELEASES:
        check_release_provenance(_LOCAL_RELEASES[release], model=model, saes=saes,
                                 release=release)
    return saes

