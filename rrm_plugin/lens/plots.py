"""Plots of the lens results, drawn from the JSON summary; each returns its `Figure` and writes a
PNG when given a path (`rrm_plugin.plotting`: no pyplot, no backend switch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from rrm_plugin.plotting import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_identifiability(summary: dict, path: Path | None = None) -> Figure:
    ident = summary["identifiability"]
    blocks = list(range(1, summary["model"]["n_layers"] + 1))
    fig = new_figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    if summary["model"]["n_prefix_tokens"]:
        ax1.plot(blocks, ident["cls_score"], "o-", label="[CLS]")
    ax1.plot(blocks, ident["image_score"], "s-", label="image tokens")
    ax1.set(xlabel="block", ylabel="identifiability score", ylim=(0, 1.02), xticks=blocks,
            title="mean class identifiability")
    ax1.axhline(1 - (summary["model"]["n_classes"] - 1) / 2 / summary["model"]["n_classes"],
                ls="--", c="grey", lw=1, label="chance")
    ax1.legend()
    ax2.plot(blocks, ident["identifiability_rate"], "o-", label="% image tokens, true class top-1")
    ax2.plot(blocks, ident["images_with_identifiable_token"], "s-",
             label="% images with >= 1 such token")
    ax2.plot(blocks, summary["change_rate"], "^-", label="change rate (% tokens)")
    ax2.set(xlabel="block", ylabel="%", ylim=(0, 102), xticks=blocks, title="rates")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_token_maps(
    images: Tensor,
    labels: Tensor,
    token_scores: Tensor,
    path: Path | None = None,
    *,
    blocks: list[int],
    object_mask: Tensor | None = None,
) -> Figure:
    n = len(images)
    side = int(round(token_scores.shape[-1] ** 0.5))
    fig = new_figure(figsize=(1.9 * (len(blocks) + 1), 1.9 * n))
    axes = fig.subplots(n, len(blocks) + 1, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        axes[i, 0].set_title(f"label {int(labels[i])}", fontsize=8)
        for j, b in enumerate(blocks, start=1):
            grid = token_scores[b, i].reshape(side, side).numpy()
            axes[i, j].imshow(grid, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
            if object_mask is not None:
                # Upsampled so the outline follows patch borders instead of cutting corners.
                up = object_mask[i].reshape(side, side).float()
                up = up.repeat_interleave(16, 0).repeat_interleave(16, 1).numpy()
                axes[i, j].contour(up, levels=[0.5], colors="white", linewidths=0.8,
                                   origin="lower", extent=(-0.5, side - 0.5, -0.5, side - 0.5))
            if i == 0:
                axes[i, j].set_title(f"block {b + 1}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("identifiability score of each patch token (white: digit patches)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_perturbation(summary: dict, path: Path | None = None) -> Figure:
    pert = summary["perturbation"]
    x = [100 * f for f in pert["fraction_removed"]]
    fig = new_figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    styles = {"negative": "-", "positive": "--"}
    for name, curve in pert["curves"].items():
        mode = name.rsplit("_", 1)[-1]
        auc = pert["auc"][name]  # None when accuracy is 0 all along (the AUC is undefined)
        shown = "undefined" if auc is None else f"{auc:.3f}"
        ax.plot(x, curve, styles.get(mode, ":"), label=f"{name} (AUC {shown})")
    ax.set(xlabel="% of patches removed", ylabel="accuracy", ylim=(0, 1.02),
           title="patch removal: negative (least important first) / positive\n"
                 "AUC with the authors' normalisation (unperturbed point left out)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_mechanisms(summary: dict, path: Path | None = None) -> Figure:
    """Sublayer change rates, residual composition, class-value and key-value agreement."""
    blocks = list(range(1, summary["model"]["n_layers"] + 1))
    fig = new_figure(figsize=(17, 3.8))
    axes = fig.subplots(1, 4)
    for name, rate in summary["sublayer_change_rate"].items():
        if rate and rate[0] is not None:
            axes[0].plot(blocks, rate, "o-", label=name)
    axes[0].axhline(50, ls="--", c="grey", lw=1)
    axes[0].set(title="class-similarity change rate", xlabel="block", ylabel="% tokens",
                ylim=(0, 102), xticks=blocks)
    axes[0].legend(fontsize=8)
    comp = summary["residual_composition"]
    for name in ("previous", "attn", "mlp", "composition"):
        axes[1].plot(blocks, comp[name], "o-", label=name)
    axes[1].set(title="top-1 class after block matches", xlabel="block", ylabel="% tokens",
                ylim=(0, 102), xticks=blocks)
    axes[1].legend(fontsize=8)
    for kind, entry in summary["memories"].items():
        if "class_value_agreement" in entry:
            cva = entry["class_value_agreement"]
            axes[2].plot(blocks, cva["trained"], "o-", label=f"{kind}")
            axes[2].plot(blocks, cva["control"], "x:", label=f"{kind} random init")
        axes[3].plot(blocks, entry["key_value_all"], "o-", label=f"{kind}")
        axes[3].plot(blocks, entry["key_value_control"], "x:", label=f"{kind} wrong class")
    axes[2].set(title="class-value agreement", xlabel="block", ylabel="mean top-1 cosine",
                xticks=blocks)
    axes[3].set(title="key-value agreement rate", xlabel="block", ylabel="% tokens",
                ylim=(0, 102), xticks=blocks)
    for ax in axes[2:]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_probes(summary: dict, path: Path | None = None) -> Figure:
    probes = summary["linear_probes"]
    blocks = list(range(1, summary["model"]["n_layers"] + 1))
    fig = new_figure(figsize=(4.2 * len(probes["kinds"]), 3.6))
    axes = fig.subplots(1, len(probes["kinds"]), squeeze=False)
    for ax, kind, probe, lens in zip(axes[0], probes["kinds"],
                                     probes["probe_accuracy_image_tokens"],
                                     probes["projection_accuracy_image_tokens"], strict=True):
        ax.plot(blocks, probe, "o-", label="ridge probe (trained)")
        ax.plot(blocks, lens, "s-", label="class projection (no training)")
        ax.set(title=f"{kind}: image-token top-1 accuracy", xlabel="block", ylabel="%",
               ylim=(0, 102), xticks=blocks)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
