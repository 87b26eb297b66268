"""Which weights an artifact was built on: SAEs record the model, baselines the model and SAEs.

A fingerprint is a short SHA-256 of tensor names, dtypes, shapes and bytes. `train_sae_release`
writes `provenance.json` into a release folder (the model's fingerprint and each SAE's);
baselines keep both in their metadata. Loading a mismatched set (SAEs trained on other model
weights, baselines of other SAEs or another model) raises `ProvenanceError` naming both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import CorruptFileError, read_json, write_json

PROVENANCE_FILENAME = "provenance.json"
FINGERPRINT_ATTR = "rrm_weights_fingerprint"  # set on models loaded from files, before any cast


class ProvenanceError(RRMUserError):
    """Artifacts built on different weights than the ones they are used with."""


SAE_WEIGHTS = ("W_enc", "W_dec", "b_enc", "b_dec")


def fingerprint(state: Mapping[str, Tensor]) -> str:
    """Short hash of named tensors (names, dtypes, shapes and values): the one fingerprint of
    model weights, SAE weights and cached text towers."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        tensor = tensor.reshape(-1)  # a 0-dim tensor (e.g. a logit scale) has no byte view
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """The fingerprint of the weights `model` was loaded from (else of its current weights)."""
    stored = getattr(model, FINGERPRINT_ATTR, None)
    return stored if stored is not None else fingerprint(model.state_dict())


def sae_fingerprint(sae) -> str:
    """The fingerprint of an SAE's weights: baselines are only valid for the SAEs they came from."""
    return fingerprint({name: getattr(sae, name) for name in SAE_WEIGHTS})


def remember_fingerprint(model: nn.Module, state: Mapping[str, Tensor] | None = None) -> nn.Module:
    """Record the fingerprint of `state` (default: the model's weights now) on the model."""
    setattr(model, FINGERPRINT_ATTR,
            fingerprint(model.state_dict() if state is None else state))
    return model


def write_release_provenance(directory: Path, *, model: nn.Module, model_name: str,
                             saes: Mapping) -> Path:
    return write_json(Path(directory) / PROVENANCE_FILENAME, {
        "model_name": model_name, "model_fingerprint": model_fingerprint(model),
        "sae_fingerprints": {h: sae_fingerprint(s) for h, s in saes.items()},
    })


def read_release_provenance(directory: Path) -> dict | None:
    path = Path(directory) / PROVENANCE_FILENAME
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("model_fingerprint"), str):
        raise CorruptFileError(f"{path} lacks a 'model_fingerprint' string")
    return data


def check_release_provenance(directory: Path, *, model: nn.Module | None, saes: Mapping,
                             release: str) -> None:
    """Raise `ProvenanceError` if the SAEs in `directory` were trained on other model weights,
    or if the loaded SAEs are not the ones the release recorded."""
    data = read_release_provenance(directory)
    if data is None:
        return
    if model is not None:
        have = model_fingerprint(model)
        if have != data["model_fingerprint"]:
            raise ProvenanceError(
                f"SAE release {release!r} was trained on model {data.get('model_name')!r} with "
                f"weights {data['model_fingerprint']}, but the model given has weights {have}: "
                "use the model the SAEs were trained on, or retrain them with `rrm train-saes`")
    recorded = data.get("sae_fingerprints", {})
    for hook, sae in saes.items():
        if hook in recorded and recorded[hook] != sae_fingerprint(sae):
            raise ProvenanceError(
                f"SAE {hook!r} of release {release!r} does not match the weights its release "
                f"recorded ({recorded[hook]}); the release folder was changed after training")
