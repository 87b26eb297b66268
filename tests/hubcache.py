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


def use_hub_cache(monkeypatch, cache: Path, scratch: Path) -> Path:
    """Point huggingface_hub (in this process and in children) at `cache`, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(scratch / "torch"))
    monkeypatch.setenv("RRM_PLUGIN_CACHE", str(scratch / "rrm_cache"))
    return cache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, with huggingface_hub offline and pointed at it (torch hub too)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    return use_hub_cache(monkeypatch, cache, tmp_path)


@pytest.fixture(scope="session")
def vit_b16_hub(tmp_path_factory):
    """A hub cache with a random full-size ViT-B/16 (timm) and paper-size authors' SAEs."""
    cache = tmp_path_factory.mktemp("vit_b16") / "hub"
    cache.mkdir()
    upstream = add_timm_vit_b16(cache)
    saes = add_authors_saes(cache, release="rrm-vit-b16-imagenet")
    return cache, upstream, saes


def torch_bytes(obj) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def add_timm_vit_b16(cache: Path, *, seed: int = 0):
    """A random full-size timm ViT-B/16 where `timm.create_model(..., pretrained=True)` looks."""
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    add_file(cache, "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "model.safetensors",
             save(state))
    return model


def add_authors_saes(cache: Path, *, release: str, seed: int = 0) -> dict:
    """Random SAEs of the paper's sizes, in the RRM authors' checkpoint layout, for `release`."""
    import torch

    from rrm_plugin.saes.authors import authors_folder, parse_authors_folder
    from rrm_plugin.zoo.releases import HUB_SAE_RELEASES

    spec = HUB_SAE_RELEASES[release]
    g = torch.Generator().manual_seed(seed)
    states = {}
    for layer in spec.layers:
        k, r, index = parse_authors_folder(layer.path)
        d_in, d_sae = spec.d_in, layer.d_sae
        w_dec = torch.randn(d_sae, d_in, generator=g)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        state = {"W_enc": w_dec.T.clone(), "W_dec": w_dec, "b_enc": torch.zeros(d_sae),
                 "b_dec": torch.randn(d_in, generator=g) * 0.01}
        folder = authors_folder(k=k, expansion=r, layer=index)
        add_file(cache, spec.repo_id, f"{folder}/epoch50.pth",
                 torch_bytes({"epoch": 50, "model_state_dict": state, "optimizer_state_dict": {}}))
        states[layer.hook_name] = state
    return states
