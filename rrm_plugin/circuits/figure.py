"""Circuit figure: layers as rows, latents as nodes sized by score, edges by weight, and the
top-activating patches of every latent as thumbnails (a matplotlib `Figure`; a PNG when given a
path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.graph import Graph, error_id, node_id
from rrm_plugin.circuits.circuit import Circuit
from rrm_plugin.hosts.vit import n_prefix_tokens
from rrm_plugin.plotting import new_figure, save_figure
from rrm_plugin.replacement.splice import splice_saes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class PatchExample(NamedTuple):
    image: int
    token: int
    activation: float


@torch.no_grad()
def top_patches(
    model: nn.Module,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "n c h w"],
    features: Mapping[str, Sequence[int]],
    *,
    n_examples: int = 3,
    batch_size: int = 256,
) -> dict[tuple[str, int], list[PatchExample]]:
    """For each `(hook, latent)`, the image patches where it is most active.

    CLS and register tokens are excluded.
    """
    prefix = n_prefix_tokens(model)
    wanted = {h: torch.as_tensor(list(f), dtype=torch.long) for h, f in features.items() if f}
    names = {f"{h}.hook_sae_acts_post": h for h in wanted}
    acts: dict[str, list[Tensor]] = {h: [] for h in wanted}
    with splice_saes(model, {h: saes[h] for h in wanted}, keep_error=True):
        for start in range(0, len(images), batch_size):
            _, cache = model.run_with_cache(images[start : start + batch_size],
                                            names_filter=lambda n: n in names)
            for name, h in names.items():
                acts[h].append(cache[name][:, prefix:, wanted[h]])  # patches only
    examples = {}
    for h, chunks in acts.items():
        a = torch.cat(chunks)  # [n, patches, n_feat]
        flat = a.permute(2, 0, 1).reshape(len(wanted[h]), -1)
        values, index = flat.topk(min(n_examples, flat.shape[1]), dim=-1)
        for j, f in enumerate(wanted[h].tolist()):
            examples[(h, f)] = [
                PatchExample(int(i) // a.shape[1], int(i) % a.shape[1] + prefix, float(v))
                for v, i in zip(values[j], index[j], strict=True) if v > 0
            ]
    return examples


def patch_thumbnail(
    image: Tensor, token: int, *, patch_size: int, context: int = 1, n_prefix: int = 1
) -> np.ndarray:
    """The patch of `token` with `context` patches around it, its border drawn in white."""
    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    grid = img.shape[0] // patch_size
    row, col = divmod(token - n_prefix, grid)
    top, left = (row - context) * patch_size, (col - context) * patch_size
    size = (2 * context + 1) * patch_size
    crop = np.zeros((size, size, 3), dtype=np.float32)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size, img.shape[0]), min(left + size, img.shape[1])
    crop[r0 - top : r1 - top, c0 - left : c1 - left] = img[r0:r1, c0:c1]
    lo, hi = context * patch_size, (context + 1) * patch_size - 1
    crop[lo, lo:hi + 1] = crop[hi, lo:hi + 1] = 1.0
    crop[lo:hi + 1, lo] = crop[lo:hi + 1, hi] = 1.0
    return crop


def _strip(thumbs: Sequence[np.ndarray]) -> np.ndarray:
    gap = np.ones((thumbs[0].shape[0], 1, 3), dtype=np.float32)
    parts = []
    for t in thumbs:
        parts += [t, gap]
    return np.concatenate(parts[:-1], axis=1)


def plot_circuit(
    graph: Graph,
    circuit: Circuit,
    image: Float[Tensor, "c h w"],
    *,
    path: Path | None = None,
    examples: Mapping[tuple[str, int], Sequence[PatchExample]] | None = None,
    reference_images: Tensor | None = None,
    patch_size: int = 4,
    max_nodes_per_layer: int = 6,
    title: str = "",
    feature_classes: Mapping[str, Tensor] | None = None,
    n_prefix: int = 1,
) -> Figure:
    """Draw the circuit: rows = SAE layers (bottom up) and the logit; node area ~ |score|.

    `feature_classes` (hook name -> [d_sae] class index, e.g. the top class of each feature in
    `rrm_plugin.lens.feature_lens`) labels every feature node with the class it writes towards.
    """

    n_layers = len(graph.layers)
    fig = new_figure(figsize=(13, 2.3 * (n_layers + 1) + 0.6))
    ax_img = fig.add_axes((0.01, 0.70, 0.13, 0.22))
    ax_img.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax_img.set_title("input", fontsize=9)
    ax_img.axis("off")
    ax = fig.add_axes((0.17, 0.03, 0.81, 0.92))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, n_layers + 0.7)
    ax.axis("off")

    positions: dict[str, tuple[float, float]] = {}
    scores: dict[str, float] = {}
    labels: dict[str, str] = {}
    for k, layer in enumerate(graph.layers):
        per_feature = _feature_scores(layer, circuit.latents[k])
        shown = sorted(per_feature, key=lambda f: -abs(per_feature[f]))[:max_nodes_per_layer]
        shown = sorted(shown, key=lambda f: -per_feature[f])
        nodes = [(node_id(k, f), per_feature[f], f) for f in shown]
        if bool(circuit.errors[k]):
            nodes.append((error_id(k), layer.error_score, None))
        for j, (nid, score, _) in enumerate(nodes):
            positions[nid] = ((j + 1) / (len(nodes) + 1), float(k))
            scores[nid] = score
        n_kept = len(circuit.layer_features(k))
        ax.text(-0.01, k, f"{layer.hook_name}\n{n_kept} latents kept", ha="right", va="center",
                fontsize=8)
        for nid, _, feature in nodes:
            if feature is not None and feature_classes is not None:
                labels[nid] = f"F{feature} -> {int(feature_classes[layer.hook_name][feature])}"
            if feature is None or examples is None or reference_images is None:
                continue
            found = examples.get((layer.hook_name, feature), [])
            if found:
                strip = _strip([patch_thumbnail(reference_images[e.image], e.token,
                                                patch_size=patch_size, n_prefix=n_prefix)
                                for e in found])
                x, y = positions[nid]
                inset = ax.inset_axes((x - 0.055, y + 0.16, 0.11, 0.42), transform=ax.transData)
                inset.imshow(strip, interpolation="nearest")
                inset.axis("off")
    positions["logit"] = (0.5, float(n_layers))
    scores["logit"] = graph.value

    weights = [abs(w) for s, t, w in circuit.edges if s in positions and t in positions]
    w_max = max(weights, default=1.0) or 1.0
    for s, t, w in circuit.edges:
        if s in positions and t in positions:
            (x0, y0), (x1, y1) = positions[s], positions[t]
            ax.plot([x0, x1], [y0, y1], color="tab:red" if w > 0 else "tab:blue",
                    lw=0.5 + 4 * abs(w) / w_max, alpha=0.25 + 0.6 * abs(w) / w_max, zorder=1)
    s_max = max((abs(v) for k, v in scores.items() if k != "logit"), default=1.0) or 1.0
    for nid, (x, y) in positions.items():
        score = scores[nid]
        if nid == "logit":
            ax.scatter([x], [y], s=900, marker="D", color="gold", edgecolor="k", zorder=3)
            ax.text(x, y + 0.3, f"class {graph.target_class}\n{graph.metric} {score:.2f}",
                    ha="center", fontsize=9)
            continue
        size = 80 + 1400 * abs(score) / s_max
        is_error = nid.endswith("error")
        ax.scatter([x], [y], s=size, marker="s" if is_error else "o",
                   color="lightgrey" if is_error else ("salmon" if score > 0 else "lightblue"),
                   edgecolor="k", zorder=3)
        label = "error" if is_error else labels.get(nid, nid.split("/")[-1])
        ax.text(x + 0.04, y, f"{label}\n{score:+.2f}", ha="left", va="center", fontsize=7)
    fig.suptitle(title or f"circuit for class {graph.target_class} ({circuit.node_count} nodes)",
                 fontsize=11)
    fig.text(0.5, 0.005, "node area ~ |score| (red: raises the target, blue: lowers it; squares: "
             "error nodes); line width ~ |edge|; thumbnails: each latent's most active reference "
             "patches (white box) with one patch of context"
             + ("\nF<i> -> c: the class feature i's decoder direction favours (feature lens)"
                if feature_classes is not None else ""), ha="center", fontsize=8)
    return save_figure(fig, path, dpi=110)


def _feature_scores(layer, mask: Tensor) -> dict[int, float]:
    """Score per selected latent (token nodes of the same latent summed)."""
    chosen = mask.any(0) if mask.ndim == 2 else mask
    out: dict[int, float] = {}
    for f, s in zip(layer.features.tolist(), layer.scores.tolist(), strict=True):
        if chosen[f]:
            out[f] = out.get(f, 0.0) + s
    return out
