"""SAE evaluation with SAELens's metric names and definitions (`sae_lens.evals`), per layer and
for the whole replacement model.

Reconstruction: `explained_variance` (SAELens's `ExplainedVarianceCalculator`), `mse` (squared
error summed over `d_in`, averaged over tokens), `cossim`, `l0`, `dead_features_pct`.
Spliced in (error dropped): `top1_accuracy`, `kl_div_with_sae`, `kl_div_score` and `ce_loss_score`
against zero ablation of the same hook point, as SAELens defines them:
`kl_div_score = (KL_zero - KL_sae) / KL_zero`,
`ce_loss_score = (CE_zero - CE_sae) / (CE_zero - CE_clean)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from sae_lens import SAE
from sae_lens.evals import ExplainedVarianceCalculator
from torch import Tensor, nn

from rrm_plugin.replacement.splice import splice_saes
from rrm_plugin.runs.sharded import concat, map_batches
from rrm_plugin.saes.positions import sae_positions

ALL_LAYERS = "all"


class ReconstructionStats:
    """Running sums over token batches from which the reconstruction metrics follow exactly."""

    def __init__(self, d_sae: int) -> None:
        self.n = 0
        self.resid = self.cossim = self.l0 = 0.0
        self.variance = ExplainedVarianceCalculator()
        self.alive = torch.zeros(d_sae, dtype=torch.bool)

    @torch.no_grad()
    def update(self, x: Float[Tensor, "n d"], sae: SAE) -> None:
        self.add(self.sums(x, sae))

    @staticmethod
    @torch.no_grad()
    def sums(x: Float[Tensor, "n d"], sae: SAE) -> dict[str, Tensor]:
        """One batch's sums (what `add` accumulates; a batched pass can gather them)."""
        z = sae.encode(x)
        x_hat = sae.decode(z)
        x64 = x.double()
        return {
            "n": torch.tensor(x.shape[0]), "sum_x": x64.sum(0), "sum_sq": x64.pow(2).sum(),
            "resid": (x64 - x_hat.double()).pow(2).sum(),
            "cossim": F.cosine_similarity(x, x_hat, dim=-1).double().sum(),
            "l0": (z > 0).double().sum(), "alive": ((z > 0).sum(0) > 0).cpu(),
        }

    def add(self, sums: dict[str, Tensor]) -> None:
        """Accumulate one batch's `sums`, in the order the batches come."""
        n = int(sums["n"])
        self.n += n
        # SAELens's streaming calculator, fed the same per-batch sums its `add_batch` would
        # accumulate (here they may come gathered from other processes).
        variance = self.variance
        sum_x = sums["sum_x"].cpu().double()
        variance.sum_x = sum_x if variance.sum_x is None else variance.sum_x + sum_x
        variance.sum_squared_norm += float(sums["sum_sq"])
        variance.sum_squared_residual += float(sums["resid"])
        variance.num_samples += n
        self.resid += float(sums["resid"])
        self.cossim += float(sums["cossim"])
        self.l0 += float(sums["l0"])
        self.alive |= sums["alive"].cpu()

    def metrics(self) -> dict[str, float]:
        return {
            "explained_variance": self.variance.compute(),
            "mse": self.resid / self.n,
            "cossim": self.cossim / self.n,
            "l0": self.l0 / self.n,
            "dead_features_pct": float(100 * (~self.alive).double().mean()),
        }


def reconstruction_metrics(x: Float[Tensor, "n d"], sae: SAE) -> dict[str, float]:
    """Reconstruction quality of `sae` on activations `x` (tokens flattened)."""
    stats = ReconstructionStats(sae.cfg.d_sae)
    stats.update(x, sae)
    return stats.metrics()


def _kl(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """Mean KL(clean || other) over images."""
    return F.kl_div(
        F.log_softmax(other_logits, -1), F.log_softmax(clean_logits, -1),
        log_target=True, reduction="batchmean",
    )


def downstream_metrics(
    *,
    clean: Float[Tensor, "batch classes"],
    spliced: Float[Tensor, "batch classes"],
    ablated: Float[Tensor, "batch classes"],
    labels: Int[Tensor, " batch"],
) -> dict[str, float]:
    """SAELens's downstream metrics, computed in float64 whatever the logits' dtype.

    A KL between nearly equal distributions is a sum of differences of log-probabilities of
    size ~1: in float32 each carries ~1e-7 of rounding, ~1e-4 of a KL of ~1e-3, and
    `kl_div_score` (a difference of two such KLs) magnifies that further. In float64 the
    metrics follow the logits to ~1e-15, so logits that agree give metrics that agree.
    """
    clean, spliced, ablated = clean.double(), spliced.double(), ablated.double()
    kl_sae, kl_zero = _kl(clean, spliced), _kl(clean, ablated)
    ce_clean = F.cross_entropy(clean, labels)
    ce_sae, ce_zero = F.cross_entropy(spliced, labels), F.cross_entropy(ablated, labels)
    return {
        "top1_accuracy": float((spliced.argmax(-1) == labels).double().mean()),
        "kl_div_with_sae": float(kl_sae),
        "kl_div_with_ablation": float(kl_zero),
        "kl_div_score": float((kl_zero - kl_sae) / kl_zero),
        "ce_loss_with_sae": float(ce_sae),
        "ce_loss_with_ablation": float(ce_zero),
        "ce_loss_without_sae": float(ce_clean),
        "ce_loss_score": float((ce_zero - ce_sae) / (ce_zero - ce_clean)),
    }


def _zero_ablation(sae: SAE):
    """Hook zeroing the positions the SAE covers (SAELens's zero-ablation baseline)."""
    positions = sae_positions(sae)

    def hook(act: Tensor, hook) -> Tensor:
        out = act.clone()
        out[:, positions] = 0
        return out

    return hook


@torch.no_grad()
def evaluate_saes(
    model: nn.Module,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "n c h w"],
    labels: Int[Tensor, " n"] | None,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Metrics per hook point, plus `"all"` for every SAE spliced at once (the replacement model).

    `"clean"` holds the model's own accuracy on the same images. Without labels, the model's
    own predictions stand in for them (accuracy then measures agreement with the model).
    Images are processed in batches; the metrics are exact over the whole set. An SAE that covers
    some token positions only (`seqpos_slice`) is measured, spliced and ablated there only.
    """
    hook_names = list(saes)
    stats = {h: ReconstructionStats(sae.cfg.d_sae) for h, sae in saes.items()}

    def batch(sl: slice) -> dict[str, Tensor]:
        x = images[sl]
        out: dict[str, Tensor] = {}
        clean, cache = model.run_with_cache(x, names_filter=lambda n: n in hook_names)
        out["clean"] = clean
        for hook_name, sae in saes.items():
            acts = cache[hook_name][:, sae_positions(sae)]
            sums = ReconstructionStats.sums(acts.reshape(-1, acts.shape[-1]), sae)
            out.update({f"stats/{hook_name}/{k}": v for k, v in sums.items()})
            with splice_saes(model, {hook_name: sae}, keep_error=False):
                out[f"spliced/{hook_name}"] = model(x)
            out[f"ablated/{hook_name}"] = model.run_with_hooks(
                x, fwd_hooks=[(hook_name, _zero_ablation(sae))])
        with splice_saes(model, saes, keep_error=False):
            out[f"spliced/{ALL_LAYERS}"] = model(x)
        out[f"ablated/{ALL_LAYERS}"] = model.run_with_hooks(
            x, fwd_hooks=[(h, _zero_ablation(sae)) for h, sae in saes.items()])
        return out

    # Batches may run in other processes (rrm_plugin.runs); sums are added in batch order.
    parts = map_batches(batch, n=len(images), batch_size=batch_size, name="eval-saes",
                        progress=progress)
    for part in parts:
        for hook_name in saes:
            prefix = f"stats/{hook_name}/"
            stats[hook_name].add({k.removeprefix(prefix): v for k, v in part.items()
                                  if k.startswith(prefix)})
    full = {key: concat(parts, key).double().cpu() for key in parts[0]
            if not key.startswith("stats/")}
    clean = full["clean"]
    labels = clean.argmax(-1) if labels is None else labels.cpu()
    results: dict[str, dict[str, float]] = {
        "clean": {"top1_accuracy": float((clean.argmax(-1) == labels).double().mean())}
    }
    for name in [*hook_names, ALL_LAYERS]:
        downstream = downstream_metrics(clean=clean, spliced=full[f"spliced/{name}"],
                                        ablated=full[f"ablated/{name}"], labels=labels)
        recon = stats[name].metrics() if name in stats else {}
        results[name] = {**recon, **downstream}
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of the per-layer and whole-model metrics."""
    cols = ["explained_variance", "mse", "cossim", "l0", "dead_features_pct", "top1_accuracy",
            "kl_div_with_sae", "kl_div_score", "ce_loss_score"]
    lines = ["| hook | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, row in results.items():
        cells = [f"{row[c]:.4g}" if c in row else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
