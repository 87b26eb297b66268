"""Measured feature types from probe stimuli (eta squared with a permutation null).

For every feature and probe family, the response of an image is the feature's largest
activation over the image's tokens. The share of the response variance explained by the
family's factor is eta squared, `SS_between / SS_total`; its permutation null shuffles the level
labels (`n_permutations` times) and the excess `eta2 - mean(null)` corrects for the number of
levels. Position also gets a token-level eta squared: on the position family, the share of the
variance of every token's activation explained by which token it is (pure positional features).

The type rule, its groups and thresholds are in `features/types_rule.py` (the README states the
same); the null that sets each group's floor, random latents read through the SAE's own encoder,
in `features/types_null.py`. The floor matters: in `digits-vit` any readout of the residual
stream is already strongly modulated by patch position and by bar orientation (big, coherent
stimulus changes), so a fixed threshold alone types a large share of random latents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from rrm_plugin.data.digits import DIGITS_DATA, DigitsCanvasConfig
from rrm_plugin.errors import RRMUserError
from rrm_plugin.features.probes import probe_families
from rrm_plugin.features.types_null import random_latent_activations, read_latents
from rrm_plugin.features.types_rule import (
    DEAD_FRACTION,
    FACTORS,
    GROUPS,
    MARGIN,
    MAX_P,
    MIN_EXCESS,
    RANDOM_QUANTILE,
    group_scores,
    random_floor,
    shares,
    type_labels,
)
from rrm_plugin.hosts.vit import n_prefix_tokens


@dataclass
class LayerTypes:
    """Measured types of one SAE's features.

    Args:
        hook_name: Hook point of the SAE.
        eta2: `[d_sae, factors]` eta squared of each factor (`FACTORS` order).
        null_mean: `[d_sae, factors]` mean eta squared under label permutations.
        p_values: `[d_sae, factors]` permutation p-values, `(1 + #null >= eta2) / (1 + n)`.
        group_scores: `[d_sae, groups]` best significant excess eta squared per type group.
        fire_fraction: `[d_sae]` share of all probe images where the feature fires.
        types: Type of every feature.
        orientation_tuning: `[d_sae, 12]` mean response per bar orientation.
        curve_tuning: `[d_sae, curvatures, bows]` mean response per arc curvature and bow.
        random_floor: `[groups]` the random latents' quantile of each group's score.
        random_types: Types the rule gives the random latents (its false-positive rate).
        random_scores: `[n_random, groups]` group scores of the random latents.
        random_fire_fraction: `[n_random]` share of probe images where each random latent fires.
    """

    hook_name: str
    eta2: Float[Tensor, "d_sae factors"]
    null_mean: Float[Tensor, "d_sae factors"]
    p_values: Float[Tensor, "d_sae factors"]
    group_scores: Float[Tensor, "d_sae groups"]
    fire_fraction: Float[Tensor, " d_sae"]
    types: list[str]
    orientation_tuning: Float[Tensor, "d_sae orientations"]
    curve_tuning: Float[Tensor, "d_sae curvatures bows"]
    random_floor: Float[Tensor, " groups"]
    random_types: list[str]
    random_scores: Float[Tensor, "n_random groups"]
    random_fire_fraction: Float[Tensor, " n_random"]

    def shares(self) -> dict[str, float]:
        return shares(self.types)


@dataclass
class FeatureTypes:
    """Measured types of every SAE, with the settings used.

    Args:
        layers: `{hook_name: LayerTypes}` in layer order.
        level_values: Value of each level per probe family, for plots.
        settings: Thresholds, permutations and probe sizes.
    """

    layers: dict[str, LayerTypes]
    level_values: dict[str, list]
    settings: dict[str, Any] = field(default_factory=dict)


def eta_squared(
    values: Float[Tensor, "n features"], groups: Int[Tensor, " n"], n_groups: int
) -> Float[Tensor, " features"]:
    """Share of each column's variance explained by the group means (0 for constant columns)."""
    one_hot = torch.nn.functional.one_hot(groups, n_groups).to(values.dtype)
    return _eta_from_one_hot(values, one_hot[None])[0]


def _eta_from_one_hot(values: Tensor, one_hot: Tensor) -> Tensor:
    # one_hot [P, n, G]: group sums by one matmul for all permutations and features at once.
    mean = values.mean(0)
    centred = values - mean
    total = (centred**2).sum(0)
    sums = torch.einsum("png,nf->pgf", one_hot, centred)
    counts = one_hot.sum(1)[..., None].clamp_min(1)
    between = (sums**2 / counts).sum(1)
    return torch.where(total > 1e-12 * values.shape[0], between / total.clamp_min(1e-30), 0.0)


def permutation_test(
    values: Float[Tensor, "n features"], groups: Int[Tensor, " n"], n_groups: int, *,
    n_permutations: int, generator: torch.Generator, chunk: int = 50,
) -> tuple[Tensor, Tensor, Tensor]:
    """`(eta2, null_mean, p_value)` per feature, with the labels shuffled `n_permutations` times."""
    observed = eta_squared(values, groups, n_groups)
    exceed = torch.zeros_like(observed)
    null_sum = torch.zeros_like(observed)
    for start in range(0, n_permutations, chunk):
        p = min(chunk, n_permutations - start)
        perms = torch.argsort(torch.rand(p, len(groups), generator=generator), dim=1)
        one_hot = torch.nn.functional.one_hot(groups[perms], n_groups).to(values.dtype)
        null = _eta_from_one_hot(values, one_hot)
        exceed += (null >= observed - 1e-12).sum(0)
        null_sum += null.sum(0)
    return observed, null_sum / n_permutations, (1 + exceed) / (1 + n_permutations)


@torch.no_grad()
def _stream(model, hooks: list[str], images: Tensor, *, batch_size: int) -> dict[str, Tensor]:
    """Per hook, `[n, tokens, d]` activations of the images (float, on the CPU)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device=device, dtype=dtype)
        _, cache = model.run_with_cache(batch, names_filter=hooks)
        for hook in hooks:
            out[hook].append(cache[hook].float().cpu())
    return {h: torch.cat(v) for h, v in out.items()}


def _check_canvas(model, canvas: DigitsCanvasConfig) -> None:
    cfg = model.cfg
    if cfg.image_size != canvas.canvas_size or cfg.patch_size != canvas.patch_size:
        raise RRMUserError(
            f"probe stimuli are drawn on a {canvas.canvas_size}px canvas with "
            f"{canvas.patch_size}px patches, the model expects {cfg.image_size}px images with "
            f"{cfg.patch_size}px patches: feature types need a digits-canvas model")


def feature_types(
    model,
    saes: Mapping[str, SAE],
    *,
    canvas: DigitsCanvasConfig | None = None,
    repeats: int = 18,
    n_permutations: int = 200,
    n_random: int = 256,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> FeatureTypes:
    """Measure every feature's factor selectivity on generated probes and assign its type.

    Args:
        model: HookedViT taking digits-canvas images.
        saes: `{hook_name: SAE}`.
        canvas: Canvas of the probes (default: the embedded digits-vit's).
        repeats: Probe images per factor level.
        n_permutations: Label permutations of the null.
        n_random: Random latents per layer (`features/types_null.py`) whose scores set the
            per-group floor.
        seed: Seed of the probes and permutations.
        batch_size: Images per forward pass.
        progress: Show a progress bar over probe families.
    """
    canvas = DIGITS_DATA if canvas is None else canvas
    _check_canvas(model, canvas)
    if n_permutations < 1:
        raise RRMUserError(f"n_permutations must be >= 1, got {n_permutations}")
    if n_random < 2:
        raise RRMUserError(f"n_random must be >= 2, got {n_random}")
    families = probe_families(canvas, repeats=repeats, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    n_prefix = n_prefix_tokens(model)
    hooks = list(saes)
    streams = {name: _stream(model, hooks, fam.images, batch_size=batch_size)
               for name, fam in tqdm(families.items(), desc="probe activations",
                                     disable=not progress)}
    layers = {}
    for hook, sae in tqdm(saes.items(), desc="feature types", disable=not progress):
        inputs = {n: streams[n][hook] for n in families}
        every = torch.arange(sae.cfg.d_sae)
        real = {n: read_latents(sae, x, every) for n, x in inputs.items()}
        random = random_latent_activations(sae, inputs, n_random=n_random, generator=generator)
        eta2, null, pval, fire, orient, curve = _measure(
            families, real, n_prefix=n_prefix, n_permutations=n_permutations,
            generator=generator)
        r_eta, r_null, r_p, r_fire, _, _ = _measure(
            families, random, n_prefix=n_prefix, n_permutations=n_permutations,
            generator=generator)
        scores, random_scores = group_scores(eta2, null, pval), group_scores(r_eta, r_null, r_p)
        floor = random_floor(random_scores, r_fire)
        layers[hook] = LayerTypes(
            hook, eta2, null, pval, scores, fire, type_labels(scores, fire, floor), orient,
            curve, floor, type_labels(random_scores, r_fire, floor), random_scores, r_fire)
    return FeatureTypes(
        layers=layers, level_values={n: f.level_values for n, f in families.items()},
        settings={"repeats": repeats, "n_permutations": n_permutations, "seed": seed,
                  "n_random": n_random, "random_quantile": RANDOM_QUANTILE,
                  "null": "random latents inserted d_sae // 16 at a time into a copy of the SAE, "
                          "read by its own encode",
                  "n_probe_images": sum(len(f.images) for f in families.values()),
                  "min_excess": MIN_EXCESS, "margin": MARGIN, "max_p": MAX_P,
                  "dead_fraction": DEAD_FRACTION, "factors": list(FACTORS),
                  "groups": {k: list(v) for k, v in GROUPS.items()}})


def _measure(families, acts: dict[str, Tensor], *, n_prefix: int, n_permutations: int,
             generator: torch.Generator):
    """`(eta2, null_mean, p, fire_fraction, orientation_tuning, curve_tuning)` of one readout."""
    per_factor = {}
    fired, n_images = 0.0, 0
    for name, fam in families.items():
        a = acts[name]
        response = a.amax(1)  # [n, features]: the image's largest activation
        fired = fired + (response > 0).float().sum(0)
        n_images += len(response)
        n_levels = len(fam.level_values)
        per_factor[name] = permutation_test(response, fam.levels, n_levels,
                                            n_permutations=n_permutations, generator=generator)
        if name == "position":
            patches = a[:, n_prefix:]
            tokens = torch.arange(patches.shape[1]).repeat(len(patches))
            per_factor["position_token"] = permutation_test(
                patches.flatten(0, 1), tokens, patches.shape[1],
                n_permutations=max(1, n_permutations // 4), generator=generator)
        if name == "orientation":
            orientation = _level_means(response, fam.levels, n_levels)
        if name == "curve":
            n_bows = int(fam.second.max()) + 1
            joint = fam.levels * n_bows + fam.second
            curve = _level_means(response, joint, n_levels * n_bows).reshape(
                -1, n_levels, n_bows)
    eta2, null, pval = (torch.stack([per_factor[f][i] for f in FACTORS], dim=1)
                        for i in range(3))
    return eta2, null, pval, fired / n_images, orientation, curve


def _level_means(values: Tensor, levels: Tensor, n_levels: int) -> Tensor:
    one_hot = torch.nn.functional.one_hot(levels, n_levels).float()
    return (one_hot.T @ values / one_hot.sum(0)[:, None]).T  # [d_sae, n_levels]
