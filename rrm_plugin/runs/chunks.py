"""Finished chunks of a run on disk: one safetensors file per chunk, written atomically.

A file is named `<phase>.<key>.<start>-<stop>.safetensors`: `key` hashes everything the results
depend on (command, options, model and SAE weights, images, baselines), `phase` is the batched
pass within the command and `start:stop` the items it covers. A rerun with the same key finds the
finished chunks and computes only the rest; a changed setting gives another key, so old chunks
are never mixed in. Writes go through `io.write_tensors` (temporary file, then rename), so a
killed process leaves only complete files. The metadata repeats key, phase and span, and a file
whose metadata disagrees with its name, or that cannot be read, is refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rrm_plugin.errors import NotAFolderError
from rrm_plugin.io import CorruptFileError, read_tensors, write_tensors

logger = logging.getLogger(__name__)
SUFFIX = ".safetensors"


def run_key(settings: Mapping[str, Any], tensors: Iterable[Tensor] = ()) -> str:
    """16 hex digits of sha256 over `settings` (JSON, sorted keys) and the dtype, shape and
    bytes of each of `tensors`."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def extend_key(key: str, tensors: Iterable[Tensor]) -> str:
    """A key for results that also depend on `tensors` (e.g. baselines resolved later)."""
    return run_key({"key": key}, tensors)


def _safe(phase: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", phase)


class ChunkStore:
    """The chunk files of one folder (several runs may share it; each reads only its own key)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotAFolderError(f"--chunks {self.folder} is a file; expected a folder")

    def path(self, *, key: str, phase: str, start: int, stop: int) -> Path:
        return self.folder / f"{_safe(phase)}.{key}.{start:08d}-{stop:08d}{SUFFIX}"

    def load(self, *, key: str, phase: str, start: int, stop: int) -> dict[str, Tensor] | None:
        """The chunk's tensors, or None if it is not finished yet."""
        path = self.path(key=key, phase=phase, start=start, stop=stop)
        if not path.is_file():
            return None
        try:
            tensors = read_tensors(path)
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (CorruptFileError, OSError, ValueError) as err:
            raise CorruptFileError(f"chunk file {path} is corrupt ({err}); delete it to "
                                   "recompute that chunk") from err
        expected = {"key": key, "phase": _safe(phase), "start": str(start), "stop": str(stop)}
        found = {k: metadata.get(k) for k in expected}
        if found != expected:
            raise CorruptFileError(f"chunk file {path} was written for another run (key "
                                   f"{found['key']}, {found['phase']}, {found['start']}:"
                                   f"{found['stop']}); delete it or give another --chunks "
                                   "folder")
        return tensors

    def save(self, tensors: Mapping[str, Tensor], *, key: str, phase: str, start: int,
             stop: int) -> Path:
        metadata = {"key": key, "phase": _safe(phase), "start": str(start), "stop": str(stop)}
        return write_tensors(self.path(key=key, phase=phase, start=start, stop=stop),
                             dict(tensors), metadata=metadata)

    def files(self, key: str) -> list[Path]:
        """Finished chunk files of `key`."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"*.{key}.*{SUFFIX}")
                      if not p.name.startswith("."))

    def clear(self, keys: Iterable[str]) -> None:
        """Remove the chunk files of `keys` (and leftovers of killed writes); the folder too
        when nothing else is left in it."""
        if not self.folder.is_dir():
            return
        for key in keys:
            for path in self.folder.glob(f"*.{key}.*"):
                path.unlink(missing_ok=True)
        if not any(self.folder.iterdir()):
            self.folder.rmdir()
        logger.info("removed the chunk files of %s from %s", list(keys), self.folder)
