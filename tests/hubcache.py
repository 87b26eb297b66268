"""Write files into a Hugging Face hub-cache folder exactly as `huggingface_hub` lays it out.

`models--{org}--{name}/blobs/{sha256}` holds the bytes, `snapshots/{commit}/{path}` links to the
blob and `refs/main` names the commit. With `HF_HUB_OFFLINE` set, `hf_hub_download`,
`snapshot_download`, timm and transformers resolve files from such a folder and nothing else.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def repo_folder(cache: Path, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def add_file(cache: Path, repo_id: str, path_in_repo: str, data: bytes) -> Path:
    """Store `data` as `path_in_repo` of `repo_id` at revision main; returns the snapshot path."""
    root = repo_folder(cache, repo_id)
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot = root / "snapshots" / COMMIT / path_in_repo
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if snapshot.exists() or snapshot.is_symlink():
        snapshot.unlink()
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def add_folder(cache: Path, repo_id: str, folder: Path) -> None:
    """Every file under `folder` (e.g. from `save_pretrained`) as a file of `repo_id`."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            add_file(cache, repo_id, path.relative_to(folder).as_posix(), path.read_bytes())


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, with huggingface_hub offline and pointed at it (torch hub too)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RRM_PLUGIN_CACHE", str(tmp_path / "rrm_cache"))
    return cache
