"""Faithfulness of circuits (the RRM paper's insertion / deletion protocol, docs/method.md §5).

Over correctly classified held-out images, circuits of growing size are inserted (circuit kept,
everything else at its baseline) and deleted (circuit set to baseline). The sweep and the
per-layer circuit size follow one of the authors' criteria (`pruning.CRITERIA`): `topn` (the
paper's rule, a fraction `p` of the largest layer), `topk` (a fraction of each layer's own size)
or `threshold` (cumulative normalised score `tau`). As in the authors' code, the first sweep
value 0 keeps no node and the value 1 keeps every node, whatever the criterion.

At every sweep point and for every image we record the target logit, adjusted logit,
probability, accuracy and the circuit's node count (nodes kept in insertion, nodes set to
baseline in deletion; the authors' files store the nodes left at their clean value instead).
Each image's curve is summarised by its area under the curve on three x axes (`AXES`), each
divided by the axis' range, so an AUC is the curve's mean height over the sweep:

- `index`: evenly spaced sweep points (the previous default; with the paper's log-like sweep
  it gives circuits of p <= 0.01 five of the ten intervals);
- `p`: the sweep values themselves (p, k or tau), trapezoids over the linear axis;
- `nodes`: the method's mean circuit size at each sweep point as a fraction of its node total
  (the headline: the one axis on which methods and criteria with different counts at the same
  sweep value are compared at equal circuit size).

Methods on the same sweep:

- `rrm`: the linearised attribution, node rule of the chosen criterion.
- `rrm_edge`: the linearised attribution, the paper's edge rule (needs the graph's edges).
- `non_linearised`: the same node rule on gradient x (activation - baseline) without the
  linearisation of attention, LayerNorm and MLP gate; the SAE input std stays a constant, as the
  authors' code detaches it in both modes (`NON_LINEARISED`).
- `random`: random nodes (error nodes included) with the same count per layer as `rrm`.
- `random_authors`: the authors' random rule, `floor(v * (F_l + 1))` random slots of each
  layer's own size `F_l + 1` at sweep value `v`, redrawn at every sweep point.
- `neuron`: residual-stream dimensions ranked by gradient x (x - median x), set to their median.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.build import graphs_from_forward
from rrm_plugin.attribution.forward import attribution_forward, check_precision
from rrm_plugin.attribution.linearise import FULL, Linearisation
from rrm_plugin.circuits.circuit import Circuit, clean_errors, intervention_hooks, stack_masks
from rrm_plugin.circuits.influence import graph_scores, prune_by_influence
from rrm_plugin.circuits.pruning import (
    CRITERIA,
    PAPER_SWEEP,
    THRESHOLD_SWEEP,
    TIES,
    edge_rule,
    select,
)
from rrm_plugin.errors import RRMUserError
from rrm_plugin.metrics.faithfulness_methods import (
    _dense_rrm_scores,
    _neuron_hooks,
    _readout,
    authors_random_counts,
    neuron_scores,
    random_masks,
)
from rrm_plugin.metrics.faithfulness_result import MODES, QUANTITIES, FaithfulnessResult
from rrm_plugin.metrics.image_indices import check_image_indices
from rrm_plugin.metrics.image_selection import chosen_images, correct_indices, select_images
from rrm_plugin.replacement.splice import splice_saes
from rrm_plugin.runs.sharded import concat, map_batches
from rrm_plugin.saes.registry import hook_sort_key

METHODS: tuple[str, ...] = (
    "rrm", "rrm_edge", "non_linearised", "random", "random_authors", "neuron"
)
# The authors' mode without LibraGrad: plain gradients, but the SAE input std is detached there too.
NON_LINEARISED = Linearisation(
    attention_pattern=False, layer_norm_scale=False, gelu_gate=False, sae_input_std=True
)
# Separate generators, so that adding or dropping a method leaves the others' draws unchanged.
RANDOM_METHODS: tuple[str, ...] = ("random", "random_authors")
_SEED_OFFSETS = {"random": 0, "random_authors": 1, "rrm": 2, "rrm_edge": 3, "non_linearised": 4,
                 "neuron": 5}


@dataclass(frozen=True)
class FaithfulnessConfig:
    """Settings of a faithfulness run.

    Args:
        sweep: Sweep values (p, k or tau); None: `PAPER_SWEEP`, or `THRESHOLD_SWEEP` for the
            threshold criterion.
        n_images: Correctly classified held-out images to use (None: all of them).
        seed: Seed of the image subset and of the random circuits (paper: 42).
        metric: Attributed quantity (`"adjusted_logit"` or `"logit"`).
        methods: Circuits to evaluate (subset of `METHODS`).
        normalisation: `"clamp"` (negative scores count as zero) or `"abs"`.
        batch_size: Images per batched forward pass.
        criterion: `"topn"` (the paper's), `"topk"` or `"threshold"` (`pruning.CRITERIA`).
        ties: Order among equal normalised scores (`pruning.TIES`).
        skip_early_layers: Leave the first N SAE layers unmasked (the authors' flag skips
            round(L / 3) of them).
        image_indices: Only these images (indices into the image set, each classified
            correctly), e.g. to recompute a few images of a run; their records equal the run's
            bit for bit (random circuits are seeded per image). Excludes `n_images`.
    """

    sweep: tuple[float, ...] | None = None
    n_images: int | None = None
    seed: int = 42
    metric: str = "adjusted_logit"
    methods: tuple[str, ...] = METHODS
    normalisation: str = "clamp"
    batch_size: int = 64
    criterion: str = "topn"
    ties: str = "raw"
    skip_early_layers: int = 0
    image_indices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_indices", check_image_indices(
            image_indices=self.image_indices, n_images=self.n_images))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise RRMUserError(
                f"unknown faithfulness method(s) {unknown}; expected {list(METHODS)}")
        if self.criterion not in CRITERIA:
            raise RRMUserError(f"unknown criterion {self.criterion!r}; expected one of "
                               f"{list(CRITERIA)}")
        if self.ties not in TIES:
            raise RRMUserError(f"unknown ties {self.ties!r}; expected one of {list(TIES)}")
        if self.skip_early_layers < 0:
            raise RRMUserError(f"skip_early_layers must be >= 0, got {self.skip_early_layers}")
        if self.sweep is None:
            default = THRESHOLD_SWEEP if self.criterion == "threshold" else PAPER_SWEEP
            object.__setattr__(self, "sweep", default)
        if not self.sweep or any(not 0 <= p <= 1 for p in self.sweep):
            raise RRMUserError(f"sweep values must be in [0, 1], got {self.sweep}")
        if list(self.sweep) != sorted(self.sweep):
            raise RRMUserError(f"sweep values must be increasing, got {self.sweep}")


# ---- the run --------------------------------------------------------------------------------


class Layout(NamedTuple):
    """The SAE layers a run masks."""

    hook_names: list[str]
    """Bottom to top."""
    sizes: list[int]
    """Slots per layer: latents + the error node."""
    d_model: int
    skip: int
    """The first `skip` layers stay unmasked."""
    device: torch.device

    def node_total(self, method: str) -> int:
        masked = len(self.hook_names) - self.skip
        return self.d_model * masked if method == "neuron" else sum(self.sizes[self.skip:])


def sae_layout(saes: Mapping[str, SAE], *, skip_early_layers: int = 0) -> Layout:
    hook_names = sorted(saes, key=hook_sort_key)
    if skip_early_layers >= len(hook_names):
        raise RRMUserError(f"skip_early_layers={skip_early_layers} leaves no SAE layer to mask "
                           f"(there are {len(hook_names)})")
    return Layout(hook_names, [saes[h].cfg.d_sae + 1 for h in hook_names],
                  saes[hook_names[0]].cfg.d_in, skip_early_layers, saes[hook_names[0]].W_dec.device)


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
    check_precision(model, saes)
    layout = sae_layout(saes, skip_early_layers=config.skip_early_layers)
    weight = next(model.parameters())
    baselines = baselines.to(weight.device)  # the neuron method's hooks read them on the device
    correct = correct_indices(model, images, labels)
    if len(correct) == 0:
        raise RRMUserError("no image is classified correctly; faithfulness needs correct images")
    chosen = (select_images(correct, config.n_images, config.seed)
              if config.image_indices is None else chosen_images(correct, config.image_indices))

    def batch(sl: slice) -> dict[str, Tensor]:
        idx = chosen[sl]
        # The image set may stay on the CPU (paper scale: 1,500 images); each batch moves.
        x, y = images[idx].to(weight.device, weight.dtype), labels[idx].to(weight.device)
        return faithfulness_batch(model, saes, x, y, baselines=baselines,
                                  config=config, layout=layout,
                                  batch_index=sl.start // config.batch_size, image_ids=idx)

    parts = map_batches(batch, n=len(chosen), batch_size=config.batch_size,
                        name="faithfulness", progress=progress)
    image_curves = {m: {mode: {q: concat(parts, f"{m}/{mode}/{q}").double().numpy()
                               for q in QUANTITIES} for mode in MODES} for m in config.methods}
    influence = {k.split("/", 1)[1]: concat(parts, k).double().numpy()
                 for k in parts[0] if k.startswith("influence/")}
    return FaithfulnessResult(
        config=config, image_indices=chosen.tolist(), image_curves=image_curves,
        node_totals={m: layout.node_total(m) for m in config.methods},
        influence_circuit={k: float(np.mean(v)) for k, v in influence.items()},
    )


def batch_generators(config: FaithfulnessConfig, batch_index: int) -> dict[str, torch.Generator]:
    """Tie-order generators of one batch (`ties="random"`): seeded by the batch's place in the
    run, so a batch draws the same order whichever process computes it."""
    return {m: torch.Generator().manual_seed(config.seed + _SEED_OFFSETS[m] + 64 * batch_index)
            for m in METHODS}


def image_generators(config: FaithfulnessConfig, image_ids: Int[Tensor, " batch"]
                     ) -> dict[str, list[torch.Generator]]:
    """One generator per random method and image, seeded by (seed, method, the image's index in
    the image set): an image draws the same random circuits in any batch, chunk or subset run,
    so a reader can recompute a few images of a run bit for bit."""
    return {m: [torch.Generator().manual_seed(image_seed(config.seed, m, int(i)))
                for i in image_ids] for m in RANDOM_METHODS}


def image_seed(seed: int, method: str, image_index: int) -> int:
    """A 64-bit seed from (seed, method, image index); SeedSequence keeps distinct tuples apart."""
    state = np.random.SeedSequence([seed, _SEED_OFFSETS[method], image_index]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


def faithfulness_batch(
    model: nn.Module, saes: Mapping[str, SAE], x: Float[Tensor, "batch c h w"],
    y: Int[Tensor, " batch"], *, baselines: Baselines, config: FaithfulnessConfig,
    layout: Layout, batch_index: int, image_ids: Int[Tensor, " batch"],
) -> dict[str, Tensor]:
    """Curves of one batch: `"method/mode/quantity"` -> `[batch, sweep]`, and
    `"influence/<stat>"` -> `[batch]` when the edge rule's graphs are built."""
    influence: dict[str, list[float]] = {}
    generators = {**batch_generators(config, batch_index), **image_generators(config, image_ids)}
    scores = method_scores(model, saes, x, y, baselines=baselines, config=config, layout=layout,
                           influence=influence)
    errors = clean_errors(model, saes, x)
    out = {f"{m}/{mode}/{q}": torch.zeros(len(x), len(config.sweep))
           for m in config.methods for mode in MODES for q in QUANTITIES}
    for j, value in enumerate(config.sweep):
        masks = method_masks(scores, value=value, config=config, layout=layout, batch=len(x),
                             generators=generators)
        for method, layer_masks in masks.items():
            count = sum(m.sum(-1) for m in layer_masks[layout.skip:]).float()
            for mode in MODES:
                logits = _run(model, saes, x, method, layer_masks, layout, baselines, errors,
                              mode)
                readout = _readout(logits, y)
                for q in QUANTITIES:
                    got = count if q == "node_count" else readout[q]
                    out[f"{method}/{mode}/{q}"][:, j] = got.float().cpu()
    out.update({f"influence/{k}": torch.tensor(v, dtype=torch.float64)
                for k, v in influence.items()})
    return out


def method_scores(
    model: nn.Module, saes: Mapping[str, SAE], x: Tensor, y: Tensor, *, baselines: Baselines,
    config: FaithfulnessConfig, layout: Layout, influence: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
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
            if influence is not None:
                _influence_summary(model, saes, x, y, graphs, baselines, influence)
    if "non_linearised" in methods:
        forward = attribution_forward(model, saes, x, baselines=baselines, classes=y,
                                      metric=config.metric, linearisation=NON_LINEARISED)
        scores["non_linearised"] = _dense_rrm_scores(forward)
    if "neuron" in methods:
        scores["neuron"] = neuron_scores(model, layout.hook_names, x, y, baselines,
                                          config.metric)
    return scores


_EDGE_ARGUMENT = {"topn": "p", "topk": "k", "threshold": "tau"}


def method_masks(
    scores: Mapping[str, Any], *, value: float, config: FaithfulnessConfig, layout: Layout,
    batch: int, generators: Mapping[str, Any],
) -> dict[str, list[Bool[Tensor, "batch n"]]]:
    """Per method, per-layer circuit masks (error slot last; neurons: d_model) at `value`.

    `generators`: a `torch.Generator` per method for tie orders, and for the random methods
    (`RANDOM_METHODS`) a list of one generator per image (`image_generators`)."""
    if value in (0.0, 1.0):
        # As the authors: sweep value 0 is the empty circuit and 1 every node, for any criterion.
        return {m: [torch.full((batch, layout.d_model if m == "neuron" else size), value == 1.0,
                               device=layout.device) for size in layout.sizes]
                for m in config.methods}
    rule = dict(criterion=config.criterion, value=value, mode=config.normalisation,
                ties=config.ties)
    n_max = max(layout.sizes)
    masks: dict[str, list[Tensor]] = {}
    if "rrm" in scores:
        rrm = select(scores["rrm"], n_max=n_max, generator=generators["rrm"], **rule)
        if "rrm" in config.methods:
            masks["rrm"] = rrm
        if "random" in config.methods:
            masks["random"] = random_masks([m.sum(-1) for m in rrm], layout.sizes,
                                           generators["random"])
    if "graphs" in scores:
        # Dense: the authors rank every latent, so large circuits reach beyond the graph's nodes.
        size = {_EDGE_ARGUMENT[config.criterion]: value}
        per_graph = [edge_rule(g, mode=config.normalisation, dense=True, ties=config.ties,
                               generator=generators["rrm_edge"], **size)
                     for g in scores["graphs"]]
        masks["rrm_edge"] = [torch.stack(layer) for layer in zip(*per_graph, strict=True)]
    if "non_linearised" in scores:
        masks["non_linearised"] = select(scores["non_linearised"], n_max=n_max,
                                         generator=generators["non_linearised"], **rule)
    if "random_authors" in config.methods:
        counts = authors_random_counts(value, layout.sizes, batch)
        masks["random_authors"] = random_masks(counts, layout.sizes,
                                               generators["random_authors"])
    if "neuron" in scores:
        masks["neuron"] = select(scores["neuron"], n_max=layout.d_model,
                                 generator=generators["neuron"], **rule)
    return {m: masks[m] for m in config.methods}


@torch.no_grad()
def _run(model, saes, x, method, layer_masks, layout, baselines, errors, mode) -> Tensor:
    # Skipped layers get no hook: their latents and error run as in the clean model.
    names, masks = layout.hook_names[layout.skip:], layer_masks[layout.skip:]
    if method == "neuron":
        return model.run_with_hooks(x, fwd_hooks=_neuron_hooks(names, masks, baselines, mode))
    latents = [m[:, None, :-1] for m in masks]
    error_flags = torch.stack([m[:, -1] for m in masks], dim=1)
    hooks = intervention_hooks(names, latents, error_flags, baselines=baselines,
                               errors=errors, mode=mode)
    with splice_saes(model, saes, keep_error=True):
        return model.run_with_hooks(x, fwd_hooks=hooks)


def _influence_summary(model, saes, x, y, graphs, baselines, influence) -> None:
    """circuit-tracer pruning of each graph: node count, scores and the circuit's faithfulness.

    `circuit_tracer_completeness_score` is circuit-tracer's completeness score, not the RRM
    paper's Table 1 completeness column (which the authors' public code does not compute).
    """
    circuits = []
    stats: dict[str, list[float]] = {"nodes": [], "circuit_tracer_replacement_score": [],
                                     "circuit_tracer_completeness_score": []}
    for graph in graphs:
        pruned = prune_by_influence(graph)
        circuits.append(Circuit.from_graph(graph, pruned.node_masks, list_edges=False))
        scores = graph_scores(graph)
        stats["nodes"].append(circuits[-1].node_count)
        stats["circuit_tracer_replacement_score"].append(scores.replacement)
        stats["circuit_tracer_completeness_score"].append(scores.completeness)
    errors = clean_errors(model, saes, x)
    latents, error_flags = stack_masks(circuits, 1)
    hook_names = circuits[0].hook_names
    for mode in MODES:
        hooks = intervention_hooks(hook_names, latents, error_flags, baselines=baselines,
                                   errors=errors, mode=mode)
        with torch.no_grad(), splice_saes(model, saes, keep_error=True):
            readout = _readout(model.run_with_hooks(x, fwd_hooks=hooks), y)
        for q in ("adjusted_logit", "probability", "accuracy"):
            stats[f"{mode}_{q}"] = readout[q].tolist()
    for key, values in stats.items():
        influence.setdefault(key, []).extend(values)
