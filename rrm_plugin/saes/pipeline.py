"""Train a full release of residual SAEs for a HookedViT and save it in SAELens's format."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrm_plugin.errors import UnknownNameError
from rrm_plugin.io import replace_directory, write_json
from rrm_plugin.provenance import write_release_provenance
from rrm_plugin.saes.training import TopKTrainingConfig, train_topk_sae


def default_sae_hooks(model: nn.Module) -> list[str]:
    """Block outputs 0..L-2: the last block output feeds the head directly (docs/method.md 1)."""
    return [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers - 1)]


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    images: Float[Tensor, "n c h w"],
    hook_names: list[str],
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, Float[Tensor, "n_tokens d"]]:
    """All-token activations at `hook_names`, tokens of all images flattened."""
    chunks: dict[str, list[Tensor]] = {h: [] for h in hook_names}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="collect activations", disable=not progress, leave=False):
        _, cache = model.run_with_cache(
            images[start : start + batch_size], names_filter=lambda n: n in hook_names
        )
        for h in hook_names:
            chunks[h].append(cache[h].reshape(-1, cache[h].shape[-1]))
    return {h: torch.cat(c) for h, c in chunks.items()}


def save_sae(sae: SAE, directory: Path) -> Path:
    """SAELens on-disk format, written into a temporary folder and swapped in atomically."""
    return replace_directory(lambda tmp: sae.save_model(tmp), Path(directory))


def train_sae_release(
    model: nn.Module,
    images: Float[Tensor, "n c h w"],
    configs: Mapping[str, TopKTrainingConfig],
    *,
    model_name: str,
    out: Path | None = None,
    progress: bool = True,
) -> dict[str, SAE]:
    """One TopK SAE per hook in `configs`, trained on all tokens of `images`.

    With `out`, writes `out/<hook_name>/{cfg.json, sae_weights.safetensors}`, a
    `training_log.json` and `provenance.json` (the model's weights fingerprint); register the
    folder with `register_sae_release` to load it by name.
    """
    hook_names = list(configs)
    unknown = [h for h in hook_names if h not in model.hook_dict]
    if unknown:
        raise UnknownNameError(f"model has no hook point(s) {unknown}")
    acts = collect_activations(model, images, hook_names, progress=progress)
    saes, logs = {}, {}
    for hook_name in tqdm(hook_names, desc="train SAEs", disable=not progress):
        sae, log = train_topk_sae(
            acts[hook_name], cfg=configs[hook_name], hook_name=hook_name,
            model_name=model_name, progress=progress,
        )
        saes[hook_name] = sae
        logs[hook_name] = {"final_mse": log.mse[-1], "final_dead_fraction": log.dead_fraction[-1]}
        if out is not None:
            save_sae(sae, Path(out) / hook_name)
    if out is not None:
        write_json(Path(out) / "training_log.json", logs)
        write_release_provenance(out, model=model, model_name=model_name, saes=saes)
    return saes


__all__ = [
    "collect_activations",
    "default_sae_hooks",
    "save_sae",
    "train_sae_release",
]
