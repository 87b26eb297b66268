"""Per-token-position baselines of SAE latents, SAE errors, residual stream (docs/method.md §3).

The attribution is gradient x (activation - baseline); insertion / deletion set nodes to their
baseline. Baselines are the median (default) or mean over a reference image set, computed per
token position through the host cache API with the SAEs spliced in (error kept, so the model is
exact). They are saved as `baselines.safetensors` next to an SAE release, with a fingerprint of
the SAE weights so stale baselines are rejected. Which file belongs to a named release is the
zoo's business (`rrm_plugin.zoo.baselines`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.errors import RRMUserError, UnknownNameError
from rrm_plugin.io import CorruptFileError, read_tensors, write_tensors
from rrm_plugin.provenance import ProvenanceError, model_fingerprint, sae_fingerprint
from rrm_plugin.replacement.splice import splice_saes
from rrm_plugin.runs.sharded import concat, map_batches

Statistic = Literal["median", "mean", "zero"]
BASELINES_FILENAME = "baselines.safetensors"
_KINDS = ("features", "errors", "resid")


@dataclass(frozen=True)
class Baselines:
    """Baseline values per SAE hook point, one row per token position.

    Args:
        statistic: `"median"`, `"mean"` or `"zero"`.
        features: `{hook: [pos, d_sae]}` baseline latent activations.
        errors: `{hook: [pos, d_model]}` baseline SAE errors.
        resid: `{hook: [pos, d_model]}` baseline residual stream (for "neuron" circuits).
        fingerprints: `{hook: sae_fingerprint}` of the SAEs used.
        n_images: Size of the reference set.
        model_fingerprint: `provenance.model_fingerprint` of the model used (None: unknown).
    """

    statistic: str
    features: dict[str, Float[Tensor, "pos d_sae"]]
    errors: dict[str, Float[Tensor, "pos d_model"]]
    resid: dict[str, Float[Tensor, "pos d_model"]]
    fingerprints: dict[str, str]
    n_images: int
    model_fingerprint: str | None = None

    @property
    def hook_names(self) -> list[str]:
        return list(self.features)

    def check(self, saes: Mapping[str, SAE], n_tokens: int | None = None, *,
              model: nn.Module | None = None) -> None:
        """Raise if these baselines were not computed for `saes` (and `n_tokens` positions, and
        `model`'s weights when both are known)."""
        if model is not None and self.model_fingerprint is not None:
            have = model_fingerprint(model)
            if have != self.model_fingerprint:
                raise ProvenanceError(
                    f"baselines were computed on model weights {self.model_fingerprint}, the "
                    f"model given has weights {have}; recompute them with `rrm baselines`")
        missing = [h for h in saes if h not in self.features]
        if missing:
            raise UnknownNameError(f"baselines have no entry for SAE hook(s) {missing}; "
                                   f"they cover {self.hook_names}")
        for hook, sae in saes.items():
            shape = tuple(self.features[hook].shape)
            if shape[1] != sae.cfg.d_sae:
                raise RRMUserError(f"baselines for {hook!r} have d_sae={shape[1]}, SAE has "
                                   f"{sae.cfg.d_sae}; recompute them with `rrm baselines`")
            if n_tokens is not None and shape[0] != n_tokens:
                raise RRMUserError(f"baselines for {hook!r} have {shape[0]} token positions, the "
                                   f"images give {n_tokens}")
            stored = self.fingerprints.get(hook)
            if stored is not None and stored != sae_fingerprint(sae):
                raise ProvenanceError(
                    f"baselines for {hook!r} were computed for different SAE weights "
                    "(fingerprint mismatch); recompute them with `rrm baselines`")

    def to(self, device: torch.device | str) -> Baselines:
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Baselines(self.statistic, move(self.features), move(self.errors), move(self.resid),
                         dict(self.fingerprints), self.n_images, self.model_fingerprint)

    @classmethod
    def zeros(cls, saes: Mapping[str, SAE], *, n_tokens: int) -> Baselines:
        """All-zero baselines (plain gradient x activation)."""
        return cls(
            statistic="zero",
            features={h: torch.zeros(n_tokens, s.cfg.d_sae) for h, s in saes.items()},
            errors={h: torch.zeros(n_tokens, s.cfg.d_in) for h, s in saes.items()},
            resid={h: torch.zeros(n_tokens, s.cfg.d_in) for h, s in saes.items()},
            fingerprints={h: sae_fingerprint(s) for h, s in saes.items()},
            n_images=0,
        )

    def save(self, path: Path) -> Path:
        tensors = {f"{kind}/{h}": getattr(self, kind)[h] for kind in _KINDS for h in self.features}
        metadata = {"statistic": self.statistic, "n_images": str(self.n_images),
                    **{f"fingerprint/{h}": f for h, f in self.fingerprints.items()}}
        if self.model_fingerprint is not None:
            metadata["model_fingerprint"] = self.model_fingerprint
        return write_tensors(Path(path), tensors, metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> Baselines:
        from safetensors import safe_open

        path = Path(path)
        tensors = read_tensors(path, what="baselines file")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if "statistic" not in metadata:
            raise CorruptFileError(f"{path} has no baselines metadata (statistic)")
        parts: dict[str, dict[str, Tensor]] = {kind: {} for kind in _KINDS}
        for key, value in tensors.items():
            kind, _, hook = key.partition("/")
            if kind not in parts or not hook:
                raise CorruptFileError(f"{path}: unexpected tensor {key!r} in a baselines file")
            parts[kind][hook] = value
        if not (set(parts["features"]) == set(parts["errors"]) == set(parts["resid"])):
            raise CorruptFileError(f"{path}: features/errors/resid cover different hook points")
        fingerprints = {k.split("/", 1)[1]: v for k, v in metadata.items()
                        if k.startswith("fingerprint/")}
        return cls(metadata["statistic"], parts["features"], parts["errors"], parts["resid"],
                   fingerprints, int(metadata.get("n_images", 0)),
                   metadata.get("model_fingerprint"))


def require_baselines(baselines, *, caller: str) -> Baselines:
    """Raise a TypeError naming the ways to get baselines unless `baselines` is a `Baselines`."""
    if not isinstance(baselines, Baselines):
        raise TypeError(
            f"{caller} needs baselines=, got {baselines!r}: e.g. "
            "load_release_baselines(release, saes) from rrm_plugin.zoo.baselines, "
            "compute_baselines(model, saes, images) or Baselines.zeros(saes, n_tokens=...) from "
            "rrm_plugin.attribution.baselines")
    return baselines


def _reduce(stacked: Tensor, statistic: str) -> Tensor:
    if statistic == "median":
        return stacked.median(dim=0).values
    if statistic == "mean":
        return stacked.mean(dim=0)
    raise RRMUserError(f"unknown baseline statistic {statistic!r}; expected 'median' or 'mean'")


@torch.no_grad()
def compute_baselines(
    model: nn.Module,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "n c h w"],
    *,
    statistic: Statistic = "median",
    batch_size: int = 256,
    progress: bool = True,
) -> Baselines:
    """Median or mean over `images` of latents, errors and residual, per token position."""
    if statistic not in ("median", "mean"):
        raise RRMUserError(f"unknown baseline statistic {statistic!r}; expected 'median' or 'mean'")
    if len(images) == 0:
        raise RRMUserError("need at least one reference image to compute baselines")
    names = {f"{h}.{suffix}": (kind, h) for h in saes for kind, suffix in
             zip(_KINDS, ("hook_sae_acts_post", "hook_sae_error", "hook_sae_input"), strict=True)}

    def batch(sl: slice) -> dict[str, Tensor]:
        with splice_saes(model, saes, keep_error=True):
            _, cache = model.run_with_cache(images[sl], names_filter=lambda n: n in names)
        return {name: cache[name].cpu() for name in names}

    # Gathered over every image (and every process), then reduced: the exact median.
    parts = map_batches(batch, n=len(images), batch_size=batch_size, name="baselines",
                        progress=progress)
    reduced = {key: _reduce(concat(parts, name), statistic) for name, key in names.items()}
    return Baselines(
        statistic=statistic,
        **{kind: {h: reduced[(kind, h)] for h in saes} for kind in _KINDS},
        fingerprints={h: sae_fingerprint(s) for h, s in saes.items()},
        n_images=len(images),
        model_fingerprint=model_fingerprint(model),
    )
