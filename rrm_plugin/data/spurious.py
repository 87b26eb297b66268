"""`digits-spurious`: the digits canvas with a class-coloured corner marker, a spurious cue.

Every image carries a solid square marker in its top-left patch whose hue names a class (hue
`c / 10` for class `c`). In training the marker names the true class on `agreement` (95%) of the
images and a uniformly random class otherwise, so a model can shortcut the digit through the
marker, like the backgrounds of Waterbirds. Groups are class x (marker agrees / disagrees).

The `stroke` variant (`SpuriousConfig(cue="stroke")`, benchmark `digits-spurious-stroke`) has no
marker: the cue is the hue of the digit's own strokes (hue `c / 10` names class `c`; saturation
and background stay random as in `digits-vit`). The cue then exists only on the digit's pixels,
so it reaches the decision through the tokens, and possibly the features, that carry the digit's
shape: the variant where a circuit's path structure could separate cue from digit.

Source digits are split three ways, all seeded: the held-out 20% of `digits-vit` is the test
split; the rest is split into the training digits and validation digits. Validation and test
images are rendered `renders` times with the marker of their class and as many times with the
marker of a random other class, so that every group is populated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from matplotlib.colors import hsv_to_rgb
from torch import Tensor

from rrm_plugin.data.digits import DigitsCanvasConfig, load_source_digits, render, split_indices
from rrm_plugin.errors import RRMUserError

N_CLASSES = 10
CUES = ("marker", "stroke")
Cue = Literal["marker", "stroke"]


@dataclass(frozen=True)
class SpuriousConfig:
    """The `digits-spurious` benchmark.

    Args:
        canvas: How digits are drawn (the same canvas as `digits-vit`).
        agreement: Share of training images whose marker names their class (else random).
        marker_size: Side of the square marker in pixels, at the top-left corner.
        validation_fraction: Share of the non-test source digits kept for validation.
        validation_seed: Seed of the training / validation split of source digits.
        validation_render_seed: Seed of the placement, colours and markers of validation images.
        test_render_seed: Seed of the placement, colours and markers of test images.
        renders: Validation and test renders of each source digit per marker kind (agreeing,
            disagreeing): more renders, tighter group accuracies (the digits are few).
        cue: `"marker"` (the corner square) or `"stroke"` (the digit's hue names the class;
            no marker is drawn and `marker_size` is unused).
    """

    canvas: DigitsCanvasConfig = DigitsCanvasConfig(canvas_size=24, scale=2, patch_size=4)
    agreement: float = 0.95
    marker_size: int = 4
    validation_fraction: float = 0.2
    validation_seed: int = 7
    validation_render_seed: int = 11
    test_render_seed: int = 13
    renders: int = 2
    cue: Cue = "marker"

    def __post_init__(self) -> None:
        if self.cue not in CUES:
            raise RRMUserError(f"cue must be one of {list(CUES)}, got {self.cue!r}")
        if not 0.0 <= self.agreement <= 1.0:
            raise RRMUserError(f"agreement must be in [0, 1], got {self.agreement}")
        if not 1 <= self.marker_size <= self.canvas.canvas_size:
            raise RRMUserError(f"marker_size must be in [1, {self.canvas.canvas_size}], got "
                               f"{self.marker_size}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise RRMUserError(f"validation_fraction must be in (0, 1), got "
                               f"{self.validation_fraction}")


class SpuriousBatch(NamedTuple):
    """Images with labels, the class each marker names, and groups."""

    images: Float[Tensor, "batch 3 height width"]
    labels: Int[Tensor, " batch"]
    markers: Int[Tensor, " batch"]
    """The class the cue names (the marker's hue, or the strokes' in the `stroke` variant)."""
    object_mask: Bool[Tensor, "batch n_patches"]
    source_index: Int[Tensor, " batch"]

    @property
    def agrees(self) -> Bool[Tensor, " batch"]:
        return self.markers == self.labels

    @property
    def groups(self) -> Int[Tensor, " batch"]:
        """Group index `2 * class + (1 if the marker disagrees else 0)`."""
        return group_index(self.labels, self.markers)


def group_index(labels: Tensor, markers: Tensor) -> Tensor:
    """`2 * class + disagrees`: groups 0, 2, 4, ... agree; 1, 3, 5, ... disagree."""
    return 2 * labels + (markers != labels).long()


def group_name(group: int) -> str:
    return f"{group // 2}/{'disagree' if group % 2 else 'agree'}"


def cue_hues(classes: Int[np.ndarray, " batch"]) -> Float[np.ndarray, " batch"]:
    """The hue that names each class: `c / 10`."""
    return np.asarray(classes, dtype=np.float64) / N_CLASSES


def marker_colours() -> Float[np.ndarray, "classes 3"]:
    """Saturated, bright RGB of each class's marker (hue c / 10)."""
    hsv = np.stack([cue_hues(np.arange(N_CLASSES)), np.ones(N_CLASSES), np.ones(N_CLASSES)], 1)
    return hsv_to_rgb(hsv).astype(np.float32)


def paint_markers(
    images: Float[np.ndarray, "batch 3 H W"], markers: Int[np.ndarray, " batch"], *, size: int
) -> Float[np.ndarray, "batch 3 H W"]:
    """Draw each image's marker (a `size` x `size` square of its class's hue) at the top left."""
    out = images.copy()
    out[:, :, :size, :size] = marker_colours()[markers][:, :, None, None]
    return out


def split_source_digits(cfg: SpuriousConfig, n_total: int) -> tuple[np.ndarray, ...]:
    """Sorted (train, validation, test) source-digit indices; test is `digits-vit`'s held-out."""
    rest, test = split_indices(cfg.canvas, n_total)
    perm = np.random.default_rng(cfg.validation_seed).permutation(rest)
    n_val = int(round(cfg.validation_fraction * len(rest)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val]), test


def _draw(digits: np.ndarray, labels: np.ndarray, idx: np.ndarray, markers: np.ndarray,
          cfg: SpuriousConfig, rng: np.random.Generator) -> SpuriousBatch:
    if cfg.cue == "stroke":
        images, masks = render(digits[idx], cfg=cfg.canvas, rng=rng, hues=cue_hues(markers))
    else:
        images, masks = render(digits[idx], cfg=cfg.canvas, rng=rng)
        images = paint_markers(images, markers, size=cfg.marker_size)
    return SpuriousBatch(
        images=torch.from_numpy(images), labels=torch.from_numpy(labels[idx]),
        markers=torch.from_numpy(markers.astype(np.int64)), object_mask=torch.from_numpy(masks),
        source_index=torch.from_numpy(idx.astype(np.int64)))


def _other_class(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (labels + rng.integers(1, N_CLASSES, len(labels))) % N_CLASSES


def _paired_set(cfg: SpuriousConfig, which: int, seed: int | tuple[int, int]) -> SpuriousBatch:
    digits, labels = load_source_digits()
    idx = split_source_digits(cfg, len(digits))[which]
    rng = np.random.default_rng(seed)
    copies = np.tile(idx, cfg.renders)
    both = np.concatenate([copies, copies])
    markers = np.concatenate([labels[copies], _other_class(labels[copies], rng)])
    return _draw(digits, labels, both, markers, cfg, rng)


def spurious_test_set(cfg: SpuriousConfig = SpuriousConfig()) -> SpuriousBatch:
    """Held-out digits, each once with its class's marker and once with another class's."""
    return _paired_set(cfg, 2, cfg.test_render_seed)


def spurious_validation_set(cfg: SpuriousConfig = SpuriousConfig()) -> SpuriousBatch:
    """Validation digits (never trained on), rendered like the test set."""
    return _paired_set(cfg, 1, cfg.validation_render_seed)


def spurious_train_sampler(cfg: SpuriousConfig = SpuriousConfig(), *, seed: int,
                           agreement: float | None = None, balanced: bool = False):
    """Infinite seeded stream of training batches from the training digits.

    Args:
        cfg: The benchmark.
        seed: Seed of the stream.
        agreement: Override `cfg.agreement` (share of markers naming the true class).
        balanced: Group-balanced stream instead: half the markers agree, the others name a
            uniformly random other class (every class x agree/disagree group equally likely).
    """
    digits, labels = load_source_digits()
    train_idx = split_source_digits(cfg, len(digits))[0]
    rng = np.random.default_rng(seed)
    share = cfg.agreement if agreement is None else agreement

    def sample(batch_size: int) -> SpuriousBatch:
        idx = train_idx[rng.integers(0, len(train_idx), batch_size)]
        if balanced:
            keep = rng.random(batch_size) < 0.5
            markers = np.where(keep, labels[idx], _other_class(labels[idx], rng))
        else:
            keep = rng.random(batch_size) < share
            markers = np.where(keep, labels[idx], rng.integers(0, N_CLASSES, batch_size))
        return _draw(digits, labels, idx, markers, cfg, rng)

    return sample


def study_render_seed(base: int, seed: int) -> int | tuple[int, int]:
    """The render seed of study seed `seed`: `base` itself for seed 0 (the shipped splits), an
    independent stream `(base, seed)` otherwise."""
    if seed < 0:
        raise RRMUserError(f"study seeds must be >= 0, got {seed}")
    return base if seed == 0 else (base, seed)


def spurious_seed_splits(seed: int, *, pool: int, cfg: SpuriousConfig = SpuriousConfig()
                         ) -> tuple[SpuriousBatch, SpuriousBatch, SpuriousBatch]:
    """(selection, validation, test) of one study seed: a fresh selection pool of `pool`
    training-stream images, fresh renders of the validation digits and of the test digits.

    Source digits stay split as the models were trained (fresh digits would need fresh models);
    what varies is which training images are scored and how every split is rendered. The pool's
    stream seed (10,000 + seed) is one that no training recipe uses.
    """
    if pool < 1:
        raise RRMUserError(f"pool must be at least 1, got {pool}")
    selection = spurious_train_sampler(cfg, seed=10_000 + seed)(pool)
    validation = _paired_set(cfg, 1, study_render_seed(cfg.validation_render_seed, seed))
    test = _paired_set(cfg, 2, study_render_seed(cfg.test_render_seed, seed))
    return selection, validation, test


BENCHMARKS = {"digits-spurious": SpuriousConfig(),
              "digits-spurious-stroke": SpuriousConfig(cue="stroke")}
"""The embedded benchmarks by name: the corner marker, and the stroke-hue variant."""
