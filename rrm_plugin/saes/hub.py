"""Reading SAE checkpoints from the Hugging Face hub (or its local cache) safely.

Downloads go through `huggingface_hub.snapshot_download`, which honours `HF_HUB_OFFLINE`,
`HF_HOME` / `HF_HUB_CACHE` and the local cache; only the files a layer needs are fetched. Torch
checkpoints are read with `weights_only=True`: a checkpoint that needs arbitrary unpickling is
refused.
"""

from __future__ import annotations

import fnmatch
import pickle
from pathlib import Path

import torch
from torch import Tensor

from rrm_plugin.errors import MissingFileError
from rrm_plugin.io import CorruptFileError


class CheckpointNotFoundError(MissingFileError):
    """A checkpoint that is neither cached nor downloadable (e.g. offline)."""


def hub_snapshot(repo_id: str, patterns: list[str], *, force_download: bool = False) -> Path:
    """The local snapshot folder of `repo_id` holding (at least) the files matching `patterns`."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, force_download=force_download)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise CheckpointNotFoundError(
            f"could not get {patterns} of Hugging Face repo {repo_id!r}{offline}: not in the "
            f"local cache {constants.HF_HUB_CACHE} and not downloadable ({type(err).__name__}: "
            f"{err}). Download it once with `hf download {repo_id}` on a machine with access, "
            "or point HF_HUB_CACHE at a cache that has it."
        ) from err
    return Path(folder)


def find_files(folder: Path, patterns: list[str]) -> list[Path]:
    """Files under `folder` whose relative path matches one of `patterns` (fnmatch), sorted."""
    found = [p for p in Path(folder).rglob("*") if p.is_file()
             and any(fnmatch.fnmatch(p.relative_to(folder).as_posix(), pat) for pat in patterns)]
    return sorted(found)


def read_torch_checkpoint(path: Path) -> dict:
    """`torch.load(path, weights_only=True)`, with clear errors for unsafe or corrupt files."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's weights_only unpickler names the Python objects it refuses as "globals".
        if "unsupported global" not in str(err).lower():
            raise CorruptFileError(f"{path} is not a readable torch checkpoint ({err})") from err
        raise CorruptFileError(
            f"{path} needs arbitrary unpickling (it stores Python objects, not only tensors); "
            "refusing to load it. Save the state dict (tensors only) instead."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CorruptFileError(f"{path} is not a readable torch checkpoint ({err})") from err
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} holds a {type(data).__name__}, expected a dict")
    return data


def check_state(
    state: dict[str, Tensor], expected: dict[str, tuple[int, ...]], *, where: str
) -> dict[str, Tensor]:
    """Insist on exactly the expected tensor names and shapes, all finite."""
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CorruptFileError(f"{where}: missing tensors {missing} (found {sorted(state)})")
    out = {}
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, Tensor):
            raise CorruptFileError(f"{where}: {name!r} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(shape):
            raise CorruptFileError(f"{where}: tensor {name!r} has shape {list(tensor.shape)}, "
                                   f"expected {list(shape)}")
        if not torch.isfinite(tensor).all():
            raise CorruptFileError(f"{where}: tensor {name!r} contains NaN/inf")
        out[name] = tensor.float()
    return out
