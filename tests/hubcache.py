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


def record_hub_snapshots(monkeypatch, module) -> list[tuple]:
    """Wrap `module.hub_snapshot` so each call's `(repo, patterns, force_download)` is recorded
    (the returned list) before the real download from the offline cache."""
    calls: list[tuple] = []
    real = module.hub_snapshot

    def recording(repo, patterns, *, force_download=False):
        calls.append((repo, patterns, force_download))
        return real(repo, patterns)

    monkeypatch.setattr(module, "hub_snapshot", recording)
    return calls


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


def tiny_open_clip_config(*, width: int = 32, layers: int = 2, heads: int = 2) -> dict:
    """An open_clip `model_cfg` shaped like ViT-B/32 at 224 px with a tiny text tower.

    The text tower keeps open_clip's real vocabulary and context (its bundled BPE tokenizer
    produces ids up to 49407), but is one narrow layer.
    """
    return {"embed_dim": 24,
            "vision_cfg": {"image_size": 224, "layers": layers, "width": width,
                           "patch_size": 32, "head_width": width // heads},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2,
                         "layers": 1}}


def add_open_clip(cache: Path, repo_id: str, model_cfg: dict, *, seed: int = 0,
                  weights_file: str = "open_clip_model.safetensors"):
    """A random open_clip CLIP as on the hub: `open_clip_config.json` plus one weights file."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save

    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg).eval()
    with torch.no_grad():  # open_clip leaves some tensors at zero/identity; randomise them all
        for name, param in model.named_parameters():
            if name != "logit_scale":
                param.normal_(0, 0.3 if param.ndim > 1 else 0.1)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic", "resize_mode": "shortest"}}
    add_file(cache, repo_id, "open_clip_config.json", json.dumps(config).encode())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    data = save(state) if weights_file.endswith(".safetensors") else torch_bytes(state)
    add_file(cache, repo_id, weights_file, data)
    return model


def prisma_sae_config(*, layer: int, d_in: int = 768, expansion: int = 2, topk: int | None = None,
                      cls_only: bool = False, **extra) -> dict:
    """A ViT-Prisma SAE `config.json` as its uploads hold them (old keys included)."""
    cfg = {
        "model_class_name": "HookedViT",
        "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "hook_point_layer": layer, "layer_subtype": "hook_resid_post",
        "hook_point_head_index": None, "context_size": 1 if cls_only else 50,
        "use_patches_only": False, "cls_token_only": cls_only, "d_in": d_in,
        "expansion_factor": expansion, "architecture": "standard",
        "activation_fn_str": "topk" if topk else "relu",
        "activation_fn_kwargs": {"k": topk} if topk else {},
        "b_dec_init_method": "geometric_median", "l1_coefficient": 1e-05, "lr": 0.0004,
        "device": {"__type__": "torch.device", "value": "cuda"},
        "dtype": {"__type__": "torch.dtype", "value": "torch.float32"},
        "d_sae": d_in * expansion, "total_training_images": 1300000,
    }
    if not topk:
        cfg["normalize_activations"] = None  # the vanilla series; the TopK configs omit it
    cfg.update(extra)
    return cfg


def prisma_sae_state(d_in: int, d_sae: int, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
            "b_enc": torch.randn(d_sae, generator=g) * 0.1 - 0.05,
            "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
            "b_dec": torch.randn(d_in, generator=g) * 0.1}


def add_prisma_sae(cache: Path, repo_name: str, cfg: dict, state: dict) -> None:
    """One ViT-Prisma SAE repo: `config.json` and `weights.pt` (a plain state dict)."""
    import json

    repo = f"Prisma-Multimodal/{repo_name}"
    add_file(cache, repo, "config.json", json.dumps(cfg).encode())
    add_file(cache, repo, "weights.pt", torch_bytes(state))


def add_prisma_release(cache: Path, release: str, *, expansion: int = 2, seed: int = 0) -> None:
    """Random SAEs in ViT-Prisma's layout for every layer of `release` (x`expansion` wide)."""
    from rrm_plugin.zoo.releases import HUB_SAE_RELEASES

    spec = HUB_SAE_RELEASES[release]
    topk = spec.layers[0].k
    for index, layer in enumerate(spec.layers):
        cfg = prisma_sae_config(layer=index, expansion=expansion, topk=topk,
                                cls_only=topk is not None)
        add_prisma_sae(cache, layer.path, cfg,
                       prisma_sae_state(spec.d_in, spec.d_in * expansion, seed=seed + index))


@pytest.fixture(scope="session")
def datacomp_b32_hub(tmp_path_factory):
    """A hub cache with a random ViT-B/32-shaped open_clip model and both ViT-Prisma releases."""
    from rrm_plugin.zoo.hub_models import DATACOMP_B32_REPO

    cache = tmp_path_factory.mktemp("datacomp_b32") / "hub"
    cache.mkdir()
    add_open_clip(cache, DATACOMP_B32_REPO,
                  tiny_open_clip_config(width=768, layers=12, heads=12), seed=0)
    for release in ("prisma-clip-b32-vanilla-x64", "prisma-clip-b32-topk64-cls"):
        add_prisma_release(cache, release)
    return cache
