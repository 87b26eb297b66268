"""Measured feature types from probe stimuli (eta squared with a permutation null).

For every feature and probe family, the response of an image is the feature's largest
activation over the image's tokens. The share of the response variance explained by the
family's factor is eta squared, `SS_between / SS_total`; its permutation null shuffles the level
labels (`n_permutations` times) and the excess `eta2 - mean(null)` corrects for the number of
levels. Position also gets a token-level eta squared: on the position family, the share of the
variance of every token's activation explained by which token it is (pure positional features).

Factor groups and the type rule (the README states the same thresholds):

- colour = max(hue, tint); position = max(digit offset, token index); orientation = bars'
  orientation; curve = arcs' curvature; digit/class = digit identity. Brightness/contrast is
  measured and reported but is no type: contrast scales the response of every detector (an edge
  detector fires more on brighter strokes), so it would otherwise pull edge features to colour;
- `dead`: the feature fires on fewer than `DEAD_FRACTION` of the probe images;
- otherwise the best group's excess eta squared must be significant (permutation p <=
  `MAX_P`), >= `MIN_EXCESS`, >= the `RANDOM_QUANTILE` quantile of the same group's score over
  `n_random` random directions of the same residual stream (`ReLU((x - mean) . d)`, d uniform
  on the sphere), and >= `MARGIN` x the second best group's; else `mixed`.

The random-direction floor matters: in `digits-vit` a random readout of the residual stream
is already strongly modulated by patch position and by bar orientation (big, coherent stimulus
changes), so a fixed threshold alone types about 45% of random directions.
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
from rrm_plugin.hosts.vit import n_prefix_tokens

FACTORS = ("position", "hue", "tint", "brightness", "digit", "orientation", "curve",
           "position_token")
GROUPS: dict[str, tuple[str, ...]] = {
    "position": ("position", "position_token"),
    "colour": ("hue", "tint"),
    "orientation": ("orientation",),
    "curve": ("curve",),
    "digit/class": ("digit",),
}
TYPES = (*GROUPS, "mixed", "dead")
MIN_EXCESS = 0.3
RANDOM_QUANTILE = 0.99
MARGIN = 1.5
MAX_P = 0.01
DEAD_FRACTION = 0.01


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
        random_floor: `[groups]` the random-direction quantile of each group's score.
        random_types: Types the rule gives the random directions (its false-positive rate).
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

    def shares(self) -> dict[str, float]:
        n = len(self.types)
        return {t: sum(x == t for x in self.types) / n for t in TYPES}


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


def group_scores(eta2: Tensor, null_mean: Tensor, p_values: Tensor) -> Tensor:
    """`[d_sae, groups]` best significant excess eta squared of each type group."""
    excess = torch.where(p_values <= MAX_P, (eta2 - null_mean).clamp_min(0), 0.0)
    index = {f: i for i, f in enumerate(FACTORS)}
    return torch.stack([excess[:, [index[f] for f in fs]].amax(1) for fs in GROUPS.values()],
                       dim=1)


def assign_types(
    eta2: Tensor, null_mean: Tensor, p_values: Tensor, fire_fraction: Tensor,
    floor: Tensor | None = None,
) -> tuple[Tensor, list[str]]:
    """`(group_scores [d_sae, groups], types)` by the rule in the module docstring.

    Args:
        eta2: `[d_sae, factors]`.
        null_mean: `[d_sae, factors]` mean null eta squared.
        p_values: `[d_sae, factors]`.
        fire_fraction: `[d_sae]` share of probe images where the feature fires.
        floor: `[groups]` per-group minimum score (random-direction quantile), or None.
    """
    scores = group_scores(eta2, null_mean, p_values)
    floor = torch.zeros(scores.shape[1]) if floor is None else floor
    need = floor.clamp_min(MIN_EXCESS)
    ranked = scores.sort(dim=1, descending=True)
    best, second = ranked.values[:, 0], ranked.values[:, 1]
    names = list(GROUPS)
    types = []
    for f in range(len(scores)):  # only string labels per feature; the numbers are batched
        if fire_fraction[f] < DEAD_FRACTION:
            types.append("dead")
        elif best[f] >= need[ranked.indices[f, 0]] and best[f] >= MARGIN * second[f]:
            types.append(names[int(ranked.indices[f, 0])])
        else:
            types.append("mixed")
    return scores, types


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
    n_random: int = 128,
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
        n_random: Random directions per layer whose scores set the per-group floor.
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
        d_in = streams["position"][hook].shape[-1]
        mean = torch.cat([streams[n][hook].flatten(0, 1) for n in families]).mean(0)
        directions = torch.randn(d_in, n_random, generator=generator)
        directions /= directions.norm(dim=0, keepdim=True)

        def encode(x: Tensor, sae=sae) -> Tensor:
            with torch.no_grad():
                return sae.encode(x.to(sae.device, sae.dtype)).float().cpu()

        def random_readout(x: Tensor, directions=directions, mean=mean) -> Tensor:
            return torch.relu((x - mean) @ directions)

        measured = [_measure(families, {n: encode(streams[n][hook]) for n in families},
                             n_prefix=n_prefix, n_permutations=n_permutations,
                             generator=generator)]
        measured.append(_measure(families, {n: random_readout(streams[n][hook])
                                            for n in families},
                                 n_prefix=n_prefix, n_permutations=n_permutations,
                                 generator=generator))
        (eta2, null, pval, fire, orient, curve), (r_eta, r_null, r_p, r_fire, _, _) = measured
        random_scores = group_scores(r_eta, r_null, r_p)
        floor = random_scores.quantile(RANDOM_QUANTILE, dim=0)
        scores, types = assign_types(eta2, null, pval, fire, floor)
        _, random_types = assign_types(r_eta, r_null, r_p, r_fire, floor)
        layers[hook] = LayerTypes(hook, eta2, null, pval, scores, fire, types, orient, curve,
                                  floor, random_types)
    return FeatureTypes(
        layers=layers, level_values={n: f.level_values for n, f in families.items()},
        settings={"repeats": repeats, "n_permutations": n_permutations, "seed": seed,
                  "n_random": n_random, "random_quantile": RANDOM_QUANTILE,
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
