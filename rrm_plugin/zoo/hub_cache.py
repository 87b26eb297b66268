"""Offline, before any upstream loader runs: is each hub model's upstream repo in the cache?

timm, transformers and open_clip report an uncached repo offline with several lines about
connections and offline modes, after seconds of imports. With `HF_HUB_OFFLINE` set, `load_model`
first looks for each repo's snapshot in the Hugging Face cache (and for DINOv2's head in torch
hub's cache) and refuses with one line naming the repo and the folder it looked in.
"""

from __future__ import annotations

from pathlib import Path

# The Hugging Face repos each hub model's loader reads (tests keep this equal to the sources
# listed in hub_models.HUB_MODELS).
HUB_REPOS: dict[str, tuple[str, ...]] = {
    "vit-b16-imagenet": ("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",),
    "clip-vit-b16": ("openai/clip-vit-base-patch16",),
    "dinov2-vitb14-reg": ("facebook/dinov2-with-registers-base",),
    "clip-vit-b32": ("openai/clip-vit-base-patch32",),
    "clip-vit-b32-datacomp": ("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",),
}


def repo_cached(cache: Path, repo_id: str) -> bool:
    """A snapshot of `repo_id` with at least one file in the hub cache folder `cache`."""
    snapshots = Path(cache) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return snapshots.is_dir() and any(p.is_file() for p in snapshots.rglob("*"))


def check_offline_cache(name: str) -> None:
    """With `HF_HUB_OFFLINE` set, raise `CheckpointNotFoundError` (one line) if model `name`'s
    upstream files are not cached; nothing happens online or for other models."""
    from huggingface_hub import constants

    from rrm_plugin.saes.hub import CheckpointNotFoundError

    if not constants.HF_HUB_OFFLINE:
        return
    cache = Path(constants.HF_HUB_CACHE)
    for repo_id in HUB_REPOS.get(name, ()):
        if not repo_cached(cache, repo_id):
            raise CheckpointNotFoundError(
                f"model {name!r} needs Hugging Face repo {repo_id!r}, which is not in the hub "
                f"cache {cache} (HF_HUB_OFFLINE is set): download it once with `hf download "
                f"{repo_id}` on a machine with access, or point HF_HUB_CACHE at a cache that "
                "has it")
    if name == "dinov2-vitb14-reg":
        from rrm_plugin.zoo.hub_models import DINOV2_HEAD_URL, dinov2_head_path

        head = dinov2_head_path()
        if not head.is_file():
            raise CheckpointNotFoundError(
                f"model {name!r} needs DINOv2's linear head {head.name}, which is not in torch "
                f"hub's cache {head.parent} (HF_HUB_OFFLINE is set): download "
                f"{DINOV2_HEAD_URL} there")
