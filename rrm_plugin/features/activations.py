"""Top-activating images, densities and histograms of every SAE feature, in one batched pass.

Per batch the model runs once (all SAE hook points cached), each SAE encodes its hook's stream,
and per feature the image score is the maximum activation over the image's tokens. A bounded
top-k per feature is kept by a stable sort (ties: earlier image first) of the running top-k
concatenated with the batch's own top-k (whose activation maps are gathered alongside), so memory
stays `[d_sae, k, tokens]` whatever the number of images and no Python loop runs over features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor

from rrm_plugin.errors import RRMUserError
from rrm_plugin.runs.sharded import map_batches

# Histogram of nonzero token activations: log10 bins from 1e-3 to 1e3 (below/above clamp).
HIST_LOG10_RANGE = (-3.0, 3.0)
HIST_BINS = 48


@dataclass
class TopActivations:
    """What one SAE's features do over an image set.

    Args:
        hook_name: Hook point of the SAE.
        values: `[d_sae, k]` image scores (max activation over tokens) of the top images,
            descending; images where the feature never fires have score 0 and come last.
        indices: `[d_sae, k]` index of each top image in the image set.
        maps: `[d_sae, k, tokens]` the feature's activation on every token of each top image.
        token_density: Fraction of all tokens (images x tokens) where the feature is > 0.
        image_density: Fraction of images where it is > 0 on at least one token.
        max_activation: Largest activation over the whole set.
        mean_activation: Mean activation over all tokens.
        histogram: `[d_sae, bins]` counts of nonzero token activations in log10 bins.
        bin_edges: `[bins + 1]` log10 edges of the histogram (values outside are clamped in).
        n_images: Images seen.
        n_tokens: Tokens per image.
    """

    hook_name: str
    values: Float[Tensor, "d_sae k"]
    indices: Int[Tensor, "d_sae k"]
    maps: Float[Tensor, "d_sae k tokens"]
    token_density: Float[Tensor, " d_sae"]
    image_density: Float[Tensor, " d_sae"]
    max_activation: Float[Tensor, " d_sae"]
    mean_activation: Float[Tensor, " d_sae"]
    histogram: Int[Tensor, "d_sae bins"]
    bin_edges: Float[Tensor, " bins_plus_1"]
    n_images: int
    n_tokens: int

    @property
    def d_sae(self) -> int:
        return self.values.shape[0]


class _Accumulator:
    """Running top-k, counts and histogram of one SAE (all tensors on the model's device)."""

    def __init__(self, d_sae: int, k: int, n_tokens: int, device: torch.device) -> None:
        self.k = k
        self.values = torch.full((d_sae, 0), -math.inf, device=device)
        self.indices = torch.zeros((d_sae, 0), dtype=torch.long, device=device)
        self.maps = torch.zeros((d_sae, 0, n_tokens), device=device)
        self.token_count = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.image_count = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.max = torch.zeros(d_sae, device=device)
        self.total = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.hist = torch.zeros(d_sae, HIST_BINS, dtype=torch.long, device=device)

    def add(self, acts: Float[Tensor, "batch tokens d_sae"], offset: int) -> None:
        self.merge(batch_summary(acts, offset=offset, k=self.k))

    def merge(self, summary: dict[str, Tensor]) -> None:
        """Fold one batch's `batch_summary` in (batches in image order, running entries first)."""
        s = {key: value.to(self.values.device) for key, value in summary.items()}
        values = torch.cat([self.values, s["values"]], dim=1)
        indices = torch.cat([self.indices, s["indices"]], dim=1)
        maps = torch.cat([self.maps, s["maps"]], dim=1)  # [d_sae, ., tokens]
        top = torch.sort(values, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values = values.gather(1, top)
        self.indices = indices.gather(1, top)
        self.maps = maps.gather(1, top[..., None].expand(-1, -1, maps.shape[-1]))
        self.token_count += s["token_count"]
        self.image_count += s["image_count"]
        self.max = torch.maximum(self.max, s["max"])
        self.total += s["total"]
        self.hist += s["hist"]


def batch_summary(
    acts: Float[Tensor, "batch tokens d_sae"], *, offset: int, k: int
) -> dict[str, Tensor]:
    """One batch's top-k images per feature (with their maps), counts, maximum, sum and histogram.

    The batch's own top-k is taken first (stable: ties keep the earlier image), so only k maps
    per feature are gathered; `_Accumulator.merge` folds it into the running top-k.
    """
    acts = acts.float()
    batch, _, d_sae = acts.shape
    scores = acts.amax(dim=1).T  # [d_sae, batch]
    local = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    features = torch.arange(d_sae, device=acts.device)[:, None]
    firing = acts > 0
    # Histogram of the nonzero activations only (SAE codes are sparse): one bincount.
    live = acts[firing]
    feature = firing.nonzero()[:, 2]
    lo, hi = HIST_LOG10_RANGE
    bins = ((live.log10() - lo) / (hi - lo) * HIST_BINS).floor().clamp(0, HIST_BINS - 1)
    flat = feature * HIST_BINS + bins.long()
    return {
        "values": scores.gather(1, local), "indices": local + offset,
        "maps": acts[local, :, features],
        "token_count": firing.sum(dim=(0, 1)), "image_count": firing.any(dim=1).sum(0),
        "max": scores.amax(dim=1), "total": acts.sum(dim=(0, 1)).double(),
        "hist": torch.bincount(flat, minlength=d_sae * HIST_BINS).view(d_sae, HIST_BINS),
    }


def _check_inputs(model, saes: Mapping[str, SAE], images: Tensor, k: int) -> None:
    if not saes:
        raise RRMUserError("no SAEs given: expected {hook_name: SAE} with at least one entry")
    for hook in saes:
        if hook not in model.hook_dict:
            raise RRMUserError(f"SAE hook {hook!r} is not a hook point of the model "
                               "(expected e.g. 'blocks.0.hook_resid_post')")
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise RRMUserError(f"images must be a [batch, channels, height, width] tensor, got {shape}")
    if len(images) == 0:
        raise RRMUserError("images is empty: expected at least one image")
    if not isinstance(k, int) or k < 1:
        raise RRMUserError(f"k must be a positive integer, got {k!r}")


@torch.no_grad()
def collect_top_activations(
    model,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "n c h w"],
    *,
    k: int = 8,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, TopActivations]:
    """Top-k images, densities and histograms of every feature of every SAE.

    Args:
        model: HookedViT (or any HookedRootModule with the SAEs' hook points).
        saes: `{hook_name: SAE}`.
        images: Preprocessed images `[n, c, h, w]`.
        k: Top images kept per feature (fewer when the set has fewer images).
        batch_size: Images per forward pass.
        progress: Show a tqdm progress bar.
    """
    _check_inputs(model, saes, images, k)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    hooks = list(saes)
    k = min(k, len(images))

    def batch(sl: slice) -> dict[str, Tensor]:
        x = images[sl].to(device=device, dtype=dtype)
        _, cache = model.run_with_cache(x, names_filter=hooks)
        out = {}
        for hook, sae in saes.items():
            acts = sae.encode(cache[hook].to(sae.dtype))
            summary = batch_summary(acts, offset=sl.start, k=k)
            out.update({f"{hook}/{key}": value for key, value in summary.items()})
        return out

    parts = map_batches(batch, n=len(images), batch_size=batch_size,
                        name="feature activations", progress=progress)
    acc: dict[str, _Accumulator] = {}
    for part in parts:  # in image order, whichever process computed each batch
        for hook in saes:
            summary = {key.removeprefix(f"{hook}/"): value for key, value in part.items()
                       if key.startswith(f"{hook}/")}
            if hook not in acc:
                d_sae, _, n_tokens = summary["maps"].shape
                acc[hook] = _Accumulator(d_sae, k, n_tokens, device)
            acc[hook].merge(summary)
    n = len(images)
    result = {}
    for hook, a in acc.items():
        n_tokens = a.maps.shape[-1]
        result[hook] = TopActivations(
            hook_name=hook, values=a.values.cpu(), indices=a.indices.cpu(), maps=a.maps.cpu(),
            token_density=(a.token_count.double() / (n * n_tokens)).float().cpu(),
            image_density=(a.image_count.double() / n).float().cpu(),
            max_activation=a.max.cpu(),
            mean_activation=(a.total / (n * n_tokens)).float().cpu(),
            histogram=a.hist.cpu(),
            bin_edges=torch.linspace(*HIST_LOG10_RANGE, HIST_BINS + 1),
            n_images=n, n_tokens=n_tokens,
        )
    return result
