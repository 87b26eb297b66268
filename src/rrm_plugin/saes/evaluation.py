"""SAE evaluation with SAELens's metric names, per layer and for the whole replacement model.

Reconstruction: `explained_variance`, `mse`, `cossim`, `l0`, `dead_features_pct`.
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
from torch import Tensor, nn

from rrm_plugin.replacement.splice import replacement

ALL_LAYERS = "all"


def reconstruction_metrics(x: Float[Tensor, "n d"], sae: SAE) -> dict[str, float]:
    """Reconstruction quality of `sae` on activations `x` (tokens flattened)."""
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0, keepdim=True)).pow(2).sum()
    return {
        "explained_variance": float(1 - resid / total),
        "mse": float((x - x_hat).pow(2).mean()),
        "cossim": float(F.cosine_similarity(x, x_hat, dim=-1).mean()),
        "l0": float((z > 0).float().sum(-1).mean()),
        "dead_features_pct": float(100 * ((z > 0).sum(0) == 0).float().mean()),
    }


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
    kl_sae, kl_zero = _kl(clean, spliced), _kl(clean, ablated)
    ce_clean = F.cross_entropy(clean, labels)
    ce_sae, ce_zero = F.cross_entropy(spliced, labels), F.cross_entropy(ablated, labels)
    return {
        "top1_accuracy": float((spliced.argmax(-1) == labels).float().mean()),
        "kl_div_with_sae": float(kl_sae),
        "kl_div_with_ablation": float(kl_zero),
        "kl_div_score": float((kl_zero - kl_sae) / kl_zero),
        "ce_loss_with_sae": float(ce_sae),
        "ce_loss_with_ablation": float(ce_zero),
        "ce_loss_without_sae": float(ce_clean),
        "ce_loss_score": float((ce_zero - ce_sae) / (ce_zero - ce_clean)),
    }


def _zero_hook(act: Tensor, hook) -> Tensor:
    return torch.zeros_like(act)


@torch.no_grad()
def evaluate_saes(
    model: nn.Module,
    saes: Mapping[str, SAE],
    images: Tensor,
    labels: Tensor,
) -> dict[str, dict[str, float]]:
    """Metrics per hook point, plus `"all"` for every SAE spliced at once (the replacement model).

    `"clean"` holds the model's own accuracy on the same images.
    """
    hook_names = list(saes)
    clean, cache = model.run_with_cache(images, names_filter=lambda n: n in hook_names)
    results: dict[str, dict[str, float]] = {
        "clean": {"top1_accuracy": float((clean.argmax(-1) == labels).float().mean())}
    }
    for hook_name, sae in saes.items():
        x = cache[hook_name].reshape(-1, cache[hook_name].shape[-1])
        with replacement(model, {hook_name: sae}, keep_error=False):
            spliced = model(images)
        ablated = model.run_with_hooks(images, fwd_hooks=[(hook_name, _zero_hook)])
        results[hook_name] = {
            **reconstruction_metrics(x, sae),
            **downstream_metrics(clean=clean, spliced=spliced, ablated=ablated, labels=labels),
        }
    with replacement(model, saes, keep_error=False):
        spliced_all = model(images)
    ablated_all = model.run_with_hooks(images, fwd_hooks=[(h, _zero_hook) for h in hook_names])
    results[ALL_LAYERS] = downstream_metrics(
        clean=clean, spliced=spliced_all, ablated=ablated_all, labels=labels
    )
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
