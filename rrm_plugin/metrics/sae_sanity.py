"""Does a loaded SAE reconstruct the user's activations about as well as its release documents?

Which input normalisation a published checkpoint expects cannot always be read from its files
(ViT-Prisma changed its SAE normalisation while its published SAEs were being trained), and a
wrong guess gives a valid-looking SAE with poor reconstructions. Releases record the explained
variance they document in SAELens's own directory field (`expected_var_explained`, by sae_id);
an SAE whose explained variance on the user's images is far below it gets a warning naming
normalisation as the likely cause.

The threshold: measured < `EV_WARNING_RATIO` x documented (half). Honest causes of a lower value
stay well above it: images unlike the release's training set (a few points to about ten for
photos), a different definition (ViT-Prisma averages per-batch ratios, SAELens pools the sums),
and the noise of a few images in the cheap check. A mismatched normalisation loses the per-token
mean or scale the SAE never learnt to reproduce, which typically leaves little or no explained
variance.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import torch
from sae_lens import SAE
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from torch import Tensor, nn

from rrm_plugin.metrics.sae_evaluation import ReconstructionStats
from rrm_plugin.saes.positions import sae_positions

logger = logging.getLogger(__name__)

EV_WARNING_RATIO = 0.5
CHECK_IMAGES = 4  # the cheap check's images: one forward pass


class ExplainedVarianceWarning(UserWarning):
    """An SAE explains far less of the user's activations than its release documents."""


def documented_explained_variance(release: str) -> dict[str, float]:
    """The explained variance (a fraction) the release documents, by sae_id ({} if none)."""
    entry = get_pretrained_saes_directory().get(release)
    if entry is None or not entry.expected_var_explained:
        return {}
    return {sae_id: float(ev) for sae_id, ev in entry.expected_var_explained.items()
            if ev is not None}


def explained_variance_warning(*, name: str, measured: float, documented: float,
                               normalisation: str) -> str | None:
    """The warning for one SAE, or None when `measured` is within the threshold."""
    if measured >= EV_WARNING_RATIO * documented:
        return None
    other = "none" if normalisation == "layer_norm" else "layer_norm"
    return (f"SAE {name}: explained variance {measured:.3f} on these images, but its release "
            f"documents {documented:.3f} (warning below {EV_WARNING_RATIO:g} x documented). "
            f"The likely cause is input normalisation: it was loaded with "
            f"normalize_activations={normalisation!r}; load it with "
            f"load_saes(..., cfg_overrides={{'normalize_activations': {other!r}}}) and compare")


def release_warnings(release: str, saes: Mapping[str, SAE],
                     explained_variance: Mapping[str, float]) -> list[str]:
    """Warnings for the SAEs (`{hook: SAE}`) whose measured explained variance (by hook) is far
    below what `release` documents; a release that documents none gives one line saying so."""
    documented = documented_explained_variance(release)
    if not documented:
        return [f"release {release!r} documents no explained variance: normalisation check "
                "skipped"]
    out = []
    for hook, sae in saes.items():
        ev = documented.get(hook)
        if ev is None or hook not in explained_variance:
            continue
        message = explained_variance_warning(
            name=f"{release}/{hook}", measured=float(explained_variance[hook]), documented=ev,
            normalisation=str(sae.cfg.normalize_activations))
        if message is not None:
            out.append(message)
    return out


@torch.no_grad()
def measured_explained_variance(model: nn.Module, saes: Mapping[str, SAE],
                                images: Tensor) -> dict[str, float]:
    """SAELens's explained variance of each SAE on `images` (one forward pass, the SAE's
    token positions)."""
    hooks = list(saes)
    _, cache = model.run_with_cache(images, names_filter=lambda n: n in hooks)
    out = {}
    for hook, sae in saes.items():
        acts = cache[hook][:, sae_positions(sae)]
        out[hook] = _explained_variance(acts.reshape(-1, acts.shape[-1]).to(sae.W_enc.dtype), sae)
    return out


def _explained_variance(x: Tensor, sae: SAE) -> float:
    stats = ReconstructionStats(sae.cfg.d_sae)
    stats.update(x, sae)
    return float(stats.metrics()["explained_variance"])


def check_explained_variance(model: nn.Module, saes: Mapping[str, SAE], images: Tensor, *,
                             release: str, n_images: int = CHECK_IMAGES) -> list[str]:
    """The cheap check of `load_saes(..., images=...)`: the first `n_images` images, one forward;
    each warning is also issued as an `ExplainedVarianceWarning`."""
    if not documented_explained_variance(release):
        logger.info("release %r documents no explained variance: normalisation check skipped",
                    release)
        return []
    measured = measured_explained_variance(model, saes, images[:n_images])
    messages = release_warnings(release, saes, measured)
    for message in messages:
        warnings.warn(message, ExplainedVarianceWarning, stacklevel=3)
    return messages
