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

The `stroke` variant (`digits-spurious-stroke`: the digit's stroke hue is the cue, no marker) has
the same recipes on its own stream: `digits-vit-stroke`, `digits-vit-stroke-balanced` and
`rrm-digits-vit-stroke`.

Trials that led here (test accuracy on marker-agreeing / disagreeing images): trained from
scratch, the architecture learned the marker alone (100% / 0%: no digit knowledge left to
recover); fine-tuning all of `digits-vit` kept it nearly unbiased (98.9% / 93.9%); this recipe
gives a model that knows digits and leans on the marker (99.7% / 70.9%).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from sae_lens import SAE
from torch import nn

from rrm_plugin.data.spurious import BENCHMARKS, SpuriousConfig, spurious_train_sampler
from rrm_plugin.errors import UnknownNameError
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


class Variant(NamedTuple):
    """One embedded debiasing benchmark with its models and SAE release."""

    benchmark: str
    """Key of `rrm_plugin.data.spurious.BENCHMARKS`."""
    model: str
    reference_model: str
    release: str

    @property
    def config(self) -> SpuriousConfig:
        return BENCHMARKS[self.benchmark]


VARIANTS = {
    "marker": Variant("digits-spurious", SPURIOUS_MODEL, BALANCED_MODEL, SPURIOUS_RELEASE),
    "stroke": Variant("digits-spurious-stroke", "digits-vit-stroke", "digits-vit-stroke-balanced",
                      "rrm-digits-vit-stroke"),
}
"""`rrm debias --variant NAME`: the corner marker, or the stroke hue of the digit itself."""


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UnknownNameError(f"unknown debiasing variant {name!r}; expected one of "
                               f"{list(VARIANTS)}")
    return VARIANTS[name]


def variant_of_model(name: str) -> str:
    """The name of the variant whose biased or balanced model is `name` (a recipe name)."""
    for key, v in VARIANTS.items():
        if name in (v.model, v.reference_model):
            return key
    names = [m for v in VARIANTS.values() for m in (v.model, v.reference_model)]
    raise UnknownNameError(f"{name!r} is not a debiasing model; expected one of {names}")


REINITIALISED = ("blocks.2.", "blocks.3.", "ln_final.", "head.")
"""Parameters trained from a fresh initialisation; the rest start from `digits-vit`."""


def train_spurious_vit(
    cfg: ModelTrainingConfig = SPURIOUS_TRAINING, *, balanced: bool = False,
    out: Path | None = None, progress: bool = True, variant_name: str = "marker",
) -> nn.Module:
    """Train `digits-vit-spurious` (or, with `balanced`, `digits-vit-balanced`; with
    `variant_name="stroke"`, their stroke-hue counterparts) from `digits-vit`'s lower layers."""
    v = variant(variant_name)
    name = v.reference_model if balanced else v.model
    sample = spurious_train_sampler(v.config, seed=cfg.seed, balanced=balanced)
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
    variant_name: str = "marker",
) -> dict[str, SAE]:
    """Train the `rrm-digits-vit-spurious` SAEs (the `rrm-digits-vit` recipe) on biased renders
    (with `variant_name="stroke"`, `rrm-digits-vit-stroke` on the stroke variant's)."""
    v = variant(variant_name)
    model = load_model(v.model) if model_dir is None else load_model_from_directory(model_dir)
    images = spurious_train_sampler(v.config, seed=SAE_DATA_SEED)(SAE_TRAINING_IMAGES)
    reference = spurious_train_sampler(v.config, seed=BASELINE_DATA_SEED)
    return train_release_with_baselines(
        model, images.images, configs or DIGITS_SAE_CONFIGS, model_name=v.model, out=out,
        reference=lambda: reference(n_baseline_images).images, progress=progress)

