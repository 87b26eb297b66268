"""Seeded recipes of the `digits-spurious` benchmark's models and SAE release.

Like Waterbirds models, which fine-tune ImageNet features on biased data, both models start from
the shipped `digits-vit`: its patch embedding and first two blocks (low-level stroke, colour and
position features; it never saw a marker) are kept, and blocks 2-3, the final LayerNorm and the
head are re-initialised and trained, with everything else, on the new stream:

- `digits-vit-spurious`: on the biased stream (the marker names the class on 95% of images);
  the model that `rrm debias` repairs.
- `digits-vit-balanced`: on the group-balanced stream; the upper reference.
- `rrm-digits-vit-spurious`: TopK SAEs of `digits-vit-spurious` (the `rrm-digits-vit` recipe) on
  renders of the biased training stream, with median baselines.

Trials that led here (test accuracy on marker-agreeing / disagreeing images): trained from
scratch, the architecture learned the marker alone (100% / 0%: no digit knowledge left to
recover); fine-tuning all of `digits-vit` kept it nearly unbiased (98.9% / 93.9%); this recipe
gives a model that knows digits and leans on the marker (99.7% / 70.9%).
"""

from __future__ import annotations

from pathlib import Path

from sae_lens import SAE
from torch import nn

from rrm_plugin.data.spurious import SpuriousConfig, spurious_train_sampler
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.saes.training import TopKTrainingConfig
from rrm_plugin.zoo.models import (
    digits_vit_config,
    load_model,
    load_model_from_directory,
    save_model,
)
from rrm_plugin.zoo.recipes import (
    BASELINE_DATA_SEED,
    DIGITS_SAE_CONFIGS,
    SAE_DATA_SEED,
    SAE_TRAINING_IMAGES,
    train_release_with_baselines,
)
from rrm_plugin.zoo.train_model import ModelTrainingConfig, train_vit

SPURIOUS_MODEL = "digits-vit-spurious"
BALANCED_MODEL = "digits-vit-balanced"
SPURIOUS_RELEASE = "rrm-digits-vit-spurious"
SPURIOUS_BENCHMARK = SpuriousConfig()
# One thread: the run reproduces bit for bit on any machine and does not slow down when other
# work shares the cores (two threads did, 5x, in a trial).
SPURIOUS_TRAINING = ModelTrainingConfig(n_steps=1000, lr=1e-3, warmup_steps=50, threads=1)
REINITIALISED = ("blocks.2.", "blocks.3.", "ln_final.", "head.")
"""Parameters trained from a fresh initialisation; the rest start from `digits-vit`."""


def train_spurious_vit(
    cfg: ModelTrainingConfig = SPURIOUS_TRAINING, *, balanced: bool = False,
    out: Path | None = None, progress: bool = True,
) -> nn.Module:
    """Train `digits-vit-spurious` (or, with `balanced`, `digits-vit-balanced`) from
    `digits-vit`'s lower layers."""
    name = BALANCED_MODEL if balanced else SPURIOUS_MODEL
    sample = spurious_train_sampler(SPURIOUS_BENCHMARK, seed=cfg.seed, balanced=balanced)
    model = train_vit(cfg, name=name, sample=sample, progress=progress,
                      init=partly_pretrained(name, seed=cfg.seed))
    if out is not None:
        save_model(model, out)
    return model


def partly_pretrained(name: str, *, seed: int) -> nn.Module:
    """A fresh `digits-vit`-shaped model carrying `digits-vit`'s weights outside
    `REINITIALISED`."""
    model = build_hooked_vit(digits_vit_config(name), seed=seed)
    kept = {k: v for k, v in load_model("digits-vit").state_dict().items()
            if not k.startswith(REINITIALISED)}
    model.load_state_dict({**model.state_dict(), **kept})
    return model


def train_spurious_saes(
    *, out: Path | None, model_dir: Path | None = None, progress: bool = True,
    configs: dict[str, TopKTrainingConfig] | None = None, n_baseline_images: int = 2048,
) -> dict[str, SAE]:
    """Train the `rrm-digits-vit-spurious` SAEs (the `rrm-digits-vit` recipe) on biased renders."""
    model = load_model(SPURIOUS_MODEL) if model_dir is None else \
        load_model_from_directory(model_dir)
    images = spurious_train_sampler(SPURIOUS_BENCHMARK, seed=SAE_DATA_SEED)(SAE_TRAINING_IMAGES)
    reference = spurious_train_sampler(SPURIOUS_BENCHMARK, seed=BASELINE_DATA_SEED)
    return train_release_with_baselines(
        model, images.images, configs or DIGITS_SAE_CONFIGS, model_name=SPURIOUS_MODEL, out=out,
        reference=lambda: reference(n_baseline_images).images, progress=progress)

