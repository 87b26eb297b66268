"""Faithfulness of circuits (RRM paper Table 1 protocol, docs/method.md section 5).

Over correctly classified held-out images, circuits of growing size (the paper's sweep of `p`, the
fraction of the largest layer kept per layer) are inserted (circuit kept, everything else at its
baseline) and deleted (circuit set to baseline). At every sweep point we record the target logit,
adjusted logit, probability, accuracy and node count; each curve is summarised by its area under
the curve over the evenly spaced sweep points (x in [0, 1]). Methods on the same sweep:

- `rrm`: the linearised attribution, node rule.
- `rrm_edge`: the linearised attribution, the paper's edge rule (needs the graph's edges).
- `non_linearised`: the same node rule on gradient x (activation - baseline) without linearisation.
- `random`: random nodes (error nodes included) with the same count per layer as `rrm`.
- `neuron`: residual-stream dimensions ranked by gradient x (x - median x), set to their median.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.forward import attribution_forward
from rrm_plugin.attribution.graph import graphs_from_forward
from rrm_plugin.attribution.linearise import FULL, NONE, linearised
from rrm_plugin.attribution.targets import metric_values
from rrm_plugin.circuits.circuit import Circuit, clean_errors, intervention_hooks, stack_masks
from rrm_plugin.circuits.pruning import (
    PAPER_SWEEP,
    edge_rule,
    graph_scores,
    node_rule,
    prune_by_influence,
)
from rrm_plugin.replacement.splice import replacement

METHODS: tuple[str, ...] = ("rrm", "rrm_edge", "non_linearised", "random", "neuron")
QUANTITIES: tuple[str, ...] = ("logit", "adjusted_logit", "probability", "accuracy", "node_count")
MODES: tuple[str, ...] = ("insertion", "deletion")


@dataclass(frozen=True)
class FaithfulnessConfig:
    """Settings of a faithfulness run.

    Args:
        sweep: Circuit sizes `p` (fraction of the largest layer's node count, per layer).
        n_images: Correctly classified held-out images to use (None: all of them).
        seed: Seed of the image subset and of the random circuits (paper: 42).
        metric: Attributed quantity (`"adjusted_logit"` or `"logit"`).
        methods: Circuits to evaluate (subset of `METHODS`).
        normalisation: `"clamp"` (negative scores count as zero) or `"abs"`.
        batch_size: Images per batched forward pass.
    """

    sweep: tuple[float, ...] = PAPER_SWEEP
    n_images: int | None = None
    seed: int = 42
    metric: str = "adjusted_logit"
    methods: tuple[str, ...] = METHODS
    normalisation: str = "clamp"
    batch_size: int = 64

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown faithfulness method(s) {unknown}; expected {list(METHODS)}")
        if not self.sweep or any(not 0 <= p <= 1 for p in self.sweep):
            raise ValueError(f"sweep values must be in [0, 1], got {self.sweep}")


def auc(values: Sequence[float]) -> float:
    """Trapezoidal area under a curve sampled at evenly spaced points of [0, 1]."""
    y = np.asarray(values, dtype=np.float64)
    if len(y) < 2:
        return float(y.mean()) if len(y) else float("nan")
    return float(((y[1:] + y[:-1]) / 2).sum() / (len(y) - 1))


@dataclass
class FaithfulnessResult:
    config: FaithfulnessConfig
    image_indices: list[int]
    curves: dict[str, dict[str, dict[str, list[float]]]]
    """`curves[method][mode][quantity]`: mean over images at each sweep point."""
    image_auc: dict[str, dict[str, dict[str, list[float]]]]
    """`image_auc[method][mode][quantity]`: AUC of every image's own curve."""
    influence_circuit: dict[str, float] = field(default_factory=dict)
    """circuit-tracer pruning (0.8 / 0.98) of the RRM graphs: means over images."""

    def auc(self, method: str, mode: str, quantity: str) -> float:
        return auc(self.curves[method][mode][quantity])

    def margin(self, method: str, other: str, *, mode: str = "insertion",
               quantity: str = "adjusted_logit") -> tuple[float, float]:
        """Mean per-image AUC difference `method - other` and its standard error."""
        a = np.asarray(self.image_auc[method][mode][quantity])
        b = np.asarray(self.image_auc[other][mode][quantity])
        diff = a - b
        return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 \
            else 0.0

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config), "n_images": len(self.image_indices),
            "image_indices": self.image_indices, "curves": self.curves,
            "auc": {m: {mode: {q: self.auc(m, mode, q) for q in QUANTITIES if q != "node_count"}
                        for mode in MODES} for m in self.curves},
            "image_auc": self.image_auc, "influence_circuit": self.influence_circuit,
        }

    def table(self) -> str:
        """Markdown table of AUCs (insertion: higher is better; deletion: lower is better)."""
        cols = [("insertion", "adjusted_logit"), ("insertion", "probability"),
                ("insertion", "accuracy"), ("deletion", "adjusted_logit"),
                ("deletion", "probability"), ("deletion", "accuracy")]
        head = "| method | " + " | ".join(f"{m} AUC {q.replace('_', ' ')}" for m, q in cols) + " |"
        lines = [head, "|---" * (len(cols) + 1) + "|"]
        for method in self.curves:
            cells = [f"{self.auc(method, m, q):.3f}" for m, q in cols]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


# ---- circuits per method --------------------------------------------------------------------


def _dense_rrm_scores(forward) -> list[Float[Tensor, "batch d_sae_plus_error"]]:
    return [torch.cat([t.node_scores.sum(1), t.error_scores[:, None]], dim=1)
            for t in forward.layers]


def _random_masks(counts: Sequence[Tensor], sizes: Sequence[int], generator: torch.Generator
                  ) -> list[Tensor]:
    masks = []
    for count, size in zip(counts, sizes, strict=True):
        ranks = torch.argsort(torch.rand(len(count), size, generator=generator), dim=-1)
        masks.append(ranks < count[:, None])
    return masks


def _neuron_scores(
    model: nn.Module, hook_names: Sequence[str], images: Tensor, classes: Tensor,
    baselines: Baselines, metric: str,
) -> list[Float[Tensor, "batch d_model"]]:
    """gradient x (x - x~) per residual dimension, summed over tokens, in the linearised model."""
    live: dict[str, Tensor] = {}
    hooks = [(h, lambda t, hook: live.__setitem__(hook.name, t)) for h in hook_names]
    with linearised(model, config=FULL), model.hooks(fwd_hooks=hooks), torch.enable_grad():
        logits = model(images.detach().requires_grad_(True))  # also for frozen parameters
        value = metric_values(logits, classes, metric).sum()
        grads = torch.autograd.grad(value, [live[h] for h in hook_names])
    return [(g * (live[h].detach() - baselines.resid[h])).sum(1)
            for g, h in zip(grads, hook_names, strict=True)]


def _neuron_hooks(hook_names, masks, baselines, mode) -> list[tuple[str, Callable]]:
    hooks = []
    for h, mask in zip(hook_names, masks, strict=True):
        keep = mask[:, None, :] if mode == "insertion" else ~mask[:, None, :]
        hooks.append((h, lambda x, hook, keep=keep, base=baselines.resid[h]:
                      torch.where(keep, x, base)))
    return hooks


def _readout(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    chosen = logits.gather(-1, labels[:, None])[:, 0]
    return {
        "logit": chosen,
        "adjusted_logit": chosen - logits.mean(-1),
        "probability": logits.softmax(-1).gather(-1, labels[:, None])[:, 0],
        "accuracy": (logits.argmax(-1) == labels).float(),
    }


# ---- the run --------------------------------------------------------------------------------


def correct_indices(
    model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 256
) -> Int[Tensor, " n"]:
    with torch.no_grad():
        preds = torch.cat([model(images[s : s + batch_size]).argmax(-1)
                           for s in range(0, len(images), batch_size)])
    return torch.nonzero(preds == labels)[:, 0]


def select_images(correct: Tensor, n_images: int | None, seed: int) -> Tensor:
    """All correctly classified images, or a seeded random subset of `n_images` of them."""
    if n_images is None or n_images >= len(correct):
        if n_images is not None and n_images > len(correct):
            raise ValueError(f"asked for {n_images} images but only {len(correct)} held-out "
                             "images are classified correctly")
        return correct
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    generator = torch.Generator().manual_seed(seed)
    return correct[torch.randperm(len(correct), generator=generator)[:n_images]].sort().values


def evaluate_faithfulness(
    model: nn.Module,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "n c h w"],
    labels: Int[Tensor, " n"],
    *,
    baselines: Baselines,
    config: FaithfulnessConfig = FaithfulnessConfig(),
    progress: bool = True,
) -> FaithfulnessResult:
    """Insertion / deletion curves of every method over the correctly classified `images`."""
    correct = correct_indices(model, images, labels)
    if len(correct) == 0:
        raise ValueError("no image is classified correctly; faithfulness needs correct images")
    chosen = select_images(correct, config.n_images, config.seed)
    hook_names = [h for _, h in sorted((int(h.split(".")[1]), h) for h in saes)]
    sizes = [saes[h].cfg.d_sae + 1 for h in hook_names]
    n_max, d_model = max(sizes), saes[hook_names[0]].cfg.d_in
    generator = torch.Generator().manual_seed(config.seed)
    per_image: dict = {m: {mode: {q: [] for q in QUANTITIES} for mode in MODES}
                       for m in config.methods}
    influence: dict[str, list[float]] = {}

    batches = range(0, len(chosen), config.batch_size)
    for start in tqdm(batches, desc="faithfulness", disable=not progress):
        idx = chosen[start : start + config.batch_size]
        x, y = images[idx], labels[idx]
        scores = _batch_scores(model, saes, x, y, baselines, config, hook_names, influence)
        errors = clean_errors(model, saes, x)
        for p in config.sweep:
            masks = _batch_masks(scores, p, n_max, d_model, sizes, config, generator)
            for method, layer_masks in masks.items():
                for mode in MODES:
                    logits = _run(model, saes, x, method, layer_masks, hook_names, baselines,
                                  errors, mode)
                    readout = _readout(logits, y)
                    count = sum(m.sum(-1) for m in layer_masks).float()
                    for q in QUANTITIES:
                        value = count if q == "node_count" else readout[q]
                        per_image[method][mode][q].append(value)

    curves, image_auc = {}, {}
    n_sweep = len(config.sweep)
    for method, modes in per_image.items():
        curves[method], image_auc[method] = {}, {}
        for mode, quantities in modes.items():
            curves[method][mode], image_auc[method][mode] = {}, {}
            for q, chunks in quantities.items():
                # chunks: [batches x sweep] of [batch]; reorder to [image, sweep].
                stacked = torch.stack([torch.cat(chunks[s::n_sweep]) for s in range(n_sweep)], 1)
                curves[method][mode][q] = stacked.mean(0).tolist()
                if q != "node_count":
                    image_auc[method][mode][q] = [auc(row) for row in stacked.tolist()]
    return FaithfulnessResult(
        config=config, image_indices=chosen.tolist(), curves=curves, image_auc=image_auc,
        influence_circuit={k: float(np.mean(v)) for k, v in influence.items()},
    )


def _batch_scores(model, saes, x, y, baselines, config, hook_names, influence) -> dict:
    """Node scores of each method for one batch (and influence-pruned circuits' results)."""
    scores: dict[str, Any] = {}
    methods = set(config.methods)
    need_graphs = "rrm_edge" in methods
    if methods & {"rrm", "rrm_edge", "random"}:
        forward = attribution_forward(model, saes, x, baselines=baselines, classes=y,
                                      metric=config.metric, linearisation=FULL,
                                      capture_blocks=need_graphs)
        scores["rrm"] = _dense_rrm_scores(forward)
        if need_graphs:
            graphs = graphs_from_forward(model, saes, forward)
            scores["graphs"] = graphs
            _influence_summary(model, saes, x, y, graphs, baselines, influence)
    if "non_linearised" in methods:
        forward = attribution_forward(model, saes, x, baselines=baselines, classes=y,
                                      metric=config.metric, linearisation=NONE)
        scores["non_linearised"] = _dense_rrm_scores(forward)
    if "neuron" in methods:
        scores["neuron"] = _neuron_scores(model, hook_names, x, y, baselines, config.metric)
    return scores


def _batch_masks(scores, p, n_max, d_model, sizes, config, generator) -> dict[str, list[Tensor]]:
    mode = config.normalisation
    masks: dict[str, list[Tensor]] = {}
    if "rrm" in scores:
        rrm = node_rule(scores["rrm"], p=p, n_max=n_max, mode=mode)
        if "rrm" in config.methods:
            masks["rrm"] = rrm
        if "random" in config.methods:
            masks["random"] = _random_masks([m.sum(-1) for m in rrm], sizes, generator)
    if "graphs" in scores:
        # Dense: the authors rank every latent, so large circuits reach beyond the graph's nodes.
        per_graph = [edge_rule(g, p=p, mode=mode, dense=True) for g in scores["graphs"]]
        masks["rrm_edge"] = [torch.stack(layer) for layer in zip(*per_graph, strict=True)]
    if "non_linearised" in scores:
        masks["non_linearised"] = node_rule(scores["non_linearised"], p=p, n_max=n_max, mode=mode)
    if "neuron" in scores:
        masks["neuron"] = node_rule(scores["neuron"], p=p, n_max=d_model, mode=mode)
    return masks


@torch.no_grad()
def _run(model, saes, x, method, layer_masks, hook_names, baselines, errors, mode) -> Tensor:
    if method == "neuron":
        return model.run_with_hooks(x, fwd_hooks=_neuron_hooks(hook_names, layer_masks,
                                                                 baselines, mode))
    latents = [m[:, None, :-1] for m in layer_masks]
    error_flags = torch.stack([m[:, -1] for m in layer_masks], dim=1)
    hooks = intervention_hooks(hook_names, latents, error_flags, baselines=baselines,
                               errors=errors, mode=mode)
    with replacement(model, saes, keep_error=True):
        return model.run_with_hooks(x, fwd_hooks=hooks)


def _influence_summary(model, saes, x, y, graphs, baselines, influence) -> None:
    """circuit-tracer pruning of each graph: node count, scores and the circuit's faithfulness."""
    circuits, stats = [], {"nodes": [], "replacement_score": [], "completeness_score": []}
    for graph in graphs:
        pruned = prune_by_influence(graph)
        circuits.append(Circuit.from_graph(graph, pruned.node_masks, list_edges=False))
        scores = graph_scores(graph)
        stats["nodes"].append(circuits[-1].node_count)
        stats["replacement_score"].append(scores.replacement)
        stats["completeness_score"].append(scores.completeness)
    errors = clean_errors(model, saes, x)
    latents, error_flags = stack_masks(circuits, 1)
    hook_names = circuits[0].hook_names
    for mode in MODES:
        hooks = intervention_hooks(hook_names, latents, error_flags, baselines=baselines,
                                   errors=errors, mode=mode)
        with torch.no_grad(), replacement(model, saes, keep_error=True):
            readout = _readout(model.run_with_hooks(x, fwd_hooks=hooks), y)
        for q in ("adjusted_logit", "probability", "accuracy"):
            stats[f"{mode}_{q}"] = readout[q].tolist()
    for key, values in stats.items():
        influence.setdefault(key, []).extend(values)


def plot_faithfulness(result: FaithfulnessResult, path: Path) -> Path:
    """Insertion (top) and deletion (bottom) curves of every quantity and method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantities = ("logit", "adjusted_logit", "probability", "accuracy")
    fig, axes = plt.subplots(2, len(quantities), figsize=(4 * len(quantities), 7), squeeze=False)
    x = np.arange(len(result.config.sweep))
    for row, mode in enumerate(MODES):
        for col, q in enumerate(quantities):
            ax = axes[row, col]
            for method in result.curves:
                ax.plot(x, result.curves[method][mode][q], marker="o", ms=3,
                        label=f"{method} (AUC {result.auc(method, mode, q):.2f})")
            ax.set_xticks(x, [f"{p:g}" for p in result.config.sweep], rotation=60, fontsize=7)
            ax.set_title(f"{mode}: {q.replace('_', ' ')}", fontsize=10)
            ax.set_xlabel("circuit size p (fraction of largest layer)", fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle(f"faithfulness over {len(result.image_indices)} correctly classified images")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
