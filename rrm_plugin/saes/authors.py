"""The RRM authors' TopK SAE checkpoints as SAELens `TopKSAE`s.

The authors save one torch checkpoint per layer, `K{k}_R{r}/L{layer}/epoch50.pth`, holding
`{"epoch", "model_state_dict", "optimizer_state_dict"}` with `model_state_dict` = `b_dec [d_in]`,
`b_enc [d_sae]`, `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]` (d_sae = r * d_in). Their forward:

    mu, s = mean(x), std(x)  (per token, unbiased)    x_n = (x - mu) / (s + 1e-5)
    z = TopK_k(ReLU((x_n - b_dec) W_enc))              x_hat = (z W_dec + b_dec) s + mu

`b_enc` is stored but never used (it receives no gradient), so the converted SAE has `b_enc = 0`.
That is exactly SAELens's `TopKSAE` with `normalize_activations="layer_norm"` and
`apply_b_dec_to_input=True` (ReLU-then-TopK and TopK-then-ReLU select the same activations).

The authors' code loads `epoch50.pth`, so that is the file read; another epoch is read only when
asked for (`cfg_overrides={"epoch": n}`, e.g. through `load_saes(..., cfg_overrides=...)`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import CorruptFileError
from rrm_plugin.saes.hub import (
    CheckpointNotFoundError,
    check_state,
    find_files,
    hub_snapshot,
    read_torch_checkpoint,
)

logger = logging.getLogger(__name__)

AUTHORS_LOADER_NAME = "rrm_plugin_rrm_authors"
# The checkpoint the authors' own code loads for every layer.
AUTHORS_EPOCH = 50
_FOLDER = re.compile(r"^K(\d+)_R([0-9.]+)/L(\d+)$")
_EPOCH_FILE = re.compile(r"^epoch(\d+)\.pth$")


def authors_folder(*, k: int, expansion: float, layer: int) -> str:
    """The authors' folder name, e.g. `K4_R0.25/L0` (integers are written `2.0`)."""
    r = f"{float(expansion)}" if float(expansion).is_integer() else f"{expansion}"
    return f"K{k}_R{r}/L{layer}"


def parse_authors_folder(folder: str) -> tuple[int, float, int]:
    match = _FOLDER.match(folder)
    if match is None:
        raise RRMUserError(
            f"{folder!r} is not an RRM authors' SAE folder (K{{k}}_R{{r}}/L{{layer}})")
    return int(match[1]), float(match[2]), int(match[3])


def checkpoint_patterns(folder: str, epoch: int | str = AUTHORS_EPOCH) -> list[str]:
    """Where `epoch{epoch}.pth` of `folder` may be (`epoch="*"`: every epoch)."""
    # The folder may sit at the repo root or under a model folder (vit/, clip_vit/, dinov2/).
    return [f"{folder}/epoch{epoch}.pth", f"*/{folder}/epoch{epoch}.pth"]


def pop_epoch(overrides: dict[str, Any]) -> int:
    """The epoch asked for in `overrides` (removed from them), else the authors' epoch 50."""
    epoch = overrides.pop("epoch", AUTHORS_EPOCH)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise RRMUserError(f"epoch must be a non-negative integer, got {epoch!r}")
    return epoch


def _epochs_in(paths: list[str], folder: str) -> list[int]:
    found = set()
    for path in paths:
        parent, _, name = path.rpartition("/")
        match = _EPOCH_FILE.match(name)
        if match and (parent == folder or parent.endswith(f"/{folder}")):
            found.add(int(match[1]))
    return sorted(found)


def available_epochs(repo_id: str, folder: str, snapshot: Path) -> list[int]:
    """The epochs the repo holds for `folder`: from the hub's file list, else the local cache."""
    from huggingface_hub import constants, list_repo_files

    paths = None
    if not constants.HF_HUB_OFFLINE:
        try:
            paths = list_repo_files(repo_id)
        except Exception:  # noqa: BLE001  (any failure to list: fall back to the local cache)
            paths = None
    if paths is None:
        paths = [p.relative_to(snapshot).as_posix() for p in Path(snapshot).rglob("*.pth")]
    return _epochs_in(paths, folder)


def convert_authors_state(
    state: dict[str, Tensor], *, d_in: int, d_sae: int, where: str
) -> dict[str, Tensor]:
    """The authors' state dict as SAELens `TopKSAE` weights (b_enc zeroed: unused upstream)."""
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
                "b_enc": (d_sae,)}
    weights = check_state(state, expected, where=where)
    if weights["b_enc"].abs().max() > 0:
        logger.warning("%s: b_enc is non-zero but the authors' forward never uses it; "
                       "the converted SAE uses b_enc = 0 as they do", where)
    weights["b_enc"] = torch.zeros(d_sae)
    return weights


def authors_sae_config(*, d_in: int, d_sae: int, k: int, hook_name: str, model_name: str
                       ) -> dict[str, Any]:
    return {
        "architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "layer_norm",
        "rescale_acts_by_decoder_norm": False, "reshape_activations": "none",
        # Flat keys, as SAELens's own loaders for external formats return them.
        "model_name": model_name, "hook_name": hook_name, "hook_head_index": None,
    }


def read_authors_sae_config(
    repo_id: str,
    folder_name: str,
    device: str | None = None,
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAELens config getter: everything follows from the folder name, nothing is read."""
    del force_download  # nothing to download
    overrides = dict(cfg_overrides or {})
    pop_epoch(overrides)  # chooses the file, not part of the SAE's config
    d_in = int(overrides.pop("d_in", 768))
    model_name = overrides.pop("model_name", repo_id)
    k, expansion, layer = parse_authors_folder(folder_name)
    cfg = authors_sae_config(d_in=d_in, d_sae=int(expansion * d_in), k=k, model_name=model_name,
                             hook_name=f"blocks.{layer}.hook_resid_post")
    cfg.update(overrides)
    cfg["device"] = device or "cpu"
    return cfg


def load_authors_sae(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor], None]:
    """SAELens loader: `folder_name` is the authors' `K{k}_R{r}/L{layer}`.

    Reads `epoch50.pth`, the checkpoint the authors' code loads; `cfg_overrides={"epoch": n}`
    reads `epoch{n}.pth` instead.
    """
    epoch = pop_epoch(dict(cfg_overrides or {}))
    cfg = read_authors_sae_config(repo_id, folder_name, device, force_download, cfg_overrides)
    patterns = checkpoint_patterns(folder_name, epoch)
    snapshot = hub_snapshot(repo_id, patterns, force_download=force_download)
    files = find_files(snapshot, patterns)
    if not files:
        found = available_epochs(repo_id, folder_name, snapshot)
        listing = (f"epochs found for {folder_name}: {found}; read one with "
                   "cfg_overrides={'epoch': n} (e.g. load_saes(..., cfg_overrides={'epoch': "
                   f"{found[-1]}}}))" if found else f"no epoch*.pth at all for {folder_name}")
        raise CheckpointNotFoundError(
            f"Hugging Face repo {repo_id!r} (snapshot {snapshot}) has no epoch{epoch}.pth for "
            f"{folder_name} (looked for {patterns}; epoch {AUTHORS_EPOCH} is what the authors' "
            f"code loads); {listing}")
    if len(files) > 1:
        raise CheckpointNotFoundError(
            f"Hugging Face repo {repo_id!r} holds {len(files)} checkpoints matching {patterns}: "
            f"{[p.relative_to(snapshot).as_posix() for p in files]}; expected exactly one")
    path = files[0]
    data = read_torch_checkpoint(path)
    state = data.get("model_state_dict", data)
    if not isinstance(state, dict):
        raise CorruptFileError(f"{path}: 'model_state_dict' is a {type(state).__name__}")
    weights = convert_authors_state(state, d_in=cfg["d_in"], d_sae=cfg["d_sae"], where=str(path))
    return cfg, {name: t.to(device) for name, t in weights.items()}, None
