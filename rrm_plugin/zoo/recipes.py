"""Seeded recipes that regenerate the shipped SAE release `rrm-digits-vit`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import BASELINES_FILENAME, compute_baselines
from rrm_plugin.data.digits import train_sampler
from rrm_plugin.saes.pipeline import train_sae_release
from rrm_plugin.saes.training import TopKTrainingConfig
from rrm_plugin.threads import torch_threads
from rrm_plugin.zoo.models import DIGITS_DATA, load_model, load_model_from_directory

# Width and k grow with depth, as in the paper's ViT-B/16 table (docs/method.md section 1).
DIGITS_SAE_CONFIGS: dict[str, TopKTrainingConfig] = {
    "blocks.0.hook_resid_post": TopKTrainingConfig(d_sae=128, k=8, lr=1e-3, n_steps=2000),
    "blocks.1.hook_resid_post": TopKTrainingConfig(d_sae=256, k=16, lr=1e-3, n_steps=2000),
    "blocks.2.hook_resid_post": TopKTrainingConfig(d_sae=256, k=16, lr=1e-3, n_steps=2000),
}
SAE_TRAINING_IMAGES = 4000
SAE_DATA_SEED = 1234
BASELINE_DATA_SEED = 4321  # `rrm baselines --seed` default


def train_digits_saes(
    *, out: Path | None, model_dir: Path | None = None, progress: bool = True,
    configs: dict[str, TopKTrainingConfig] | None = None, n_baseline_images: int = 2048,
) -> dict[str, SAE]:
    """Train the `rrm-digits-vit` SAEs on fresh renders of the training digits.

    Args:
        out: Release folder to write (SAEs, provenance, and median baselines over
            `n_baseline_images` renders, as `rrm baselines`); None: nothing is written.
        model_dir: A digits-vit saved elsewhere (default: the shipped one).
        progress: Show progress bars.
        configs: Per-hook training configs (default `DIGITS_SAE_CONFIGS`).
        n_baseline_images: Renders for the baselines written with `out`.
    """
    with torch_threads(2):  # the shipped release was trained with 2 threads
        model = (load_model("digits-vit") if model_dir is None
                 else load_model_from_directory(model_dir))
        images = train_sampler(DIGITS_DATA, seed=SAE_DATA_SEED)(SAE_TRAINING_IMAGES).images
        # The same renders and statistic as `rrm baselines` (seed 4321, median).
        reference = train_sampler(DIGITS_DATA, seed=BASELINE_DATA_SEED)
        return train_release_with_baselines(
            model, images, configs or DIGITS_SAE_CONFIGS, model_name="digits-vit", out=out,
            reference=lambda: reference(n_baseline_images).images, progress=progress)


def train_release_with_baselines(
    model: nn.Module, images: Tensor, configs: dict[str, TopKTrainingConfig], *,
    model_name: str, out: Path | None, reference: Callable[[], Tensor], progress: bool = True,
) -> dict[str, SAE]:
    """Train a release; with `out`, also write median baselines over `reference()` images."""
    saes = train_sae_release(model, images, configs, model_name=model_name, out=out,
                             progress=progress)
    if out is not None:
        compute_baselines(model, saes, reference(), progress=progress).save(
            Path(out) / BASELINES_FILENAME)
    return saes
