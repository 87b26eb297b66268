"""Trace one image end to end: graph, pruned circuit, its faithfulness, figure and files.

`trace(model, saes, image)` returns a `TraceResult` held in memory (graph, circuit, readouts,
scores, the viewer page); `TraceResult.save(folder)` writes what `rrm trace --out` writes, as a
unit. `trace_image` is the same run written straight into a folder (the demo's).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig
from rrm_plugin.attribution.graph import Granularity, Graph
from rrm_plugin.attribution.graph_views import graph_json
from rrm_plugin.attribution.targets import image_readout
from rrm_plugin.circuits.circuit import Circuit
from rrm_plugin.circuits.figure import plot_circuit, top_patches
from rrm_plugin.circuits.image_runs import run_circuits_on_image
from rrm_plugin.circuits.influence import GraphScores, graph_scores, prune_by_influence
from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.vit import n_prefix_tokens
from rrm_plugin.io import write_json
from rrm_plugin.lens.features import feature_lens
from rrm_plugin.runs.output import output_directory
from rrm_plugin.viewer.build import build_viewer, write_viewer
from rrm_plugin.viewer.cards import read_cards
from rrm_plugin.viewer.notebook import frame_html
from rrm_plugin.viewer.render import render_html
from rrm_plugin.viewer.steps import Readouts, check_readouts, pack_bits
from rrm_plugin.workflows.baselines import ResolvedBaselines, resolve_baselines
from rrm_plugin.zoo.inputs import class_names_of, display_of, held_out_images
from rrm_plugin.zoo.models import model_name_of
from rrm_plugin.zoo.releases import release_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class TraceConfig:
    """How `trace_image` builds and prunes the circuit.

    Args:
        target_class: Class to explain (None: the predicted class).
        metric: `"adjusted_logit"` (default) or `"logit"`.
        granularity: `"feature"` or `"token"` nodes.
        node_threshold: circuit-tracer node influence threshold.
        edge_threshold: circuit-tracer edge influence threshold.
        max_nodes_per_layer: Latents drawn per layer in the figure.
        max_json_edges: Strongest edges written to the readable `graph.json` (the lossless
            files keep every edge).
        viewer: Write the interactive `circuit.html` (and its `viewer.json`).
        token_top_k: Token graphs only: keep each node's strongest in-edges (sparse edge
            matrices, `EngineConfig.token_top_k`), for ViT-B-sized token graphs. The viewer
            needs dense edges, so it is refused with this.
        readouts: The viewer's insertion / deletion readouts (two forwards per distinct
            circuit): `"curve"` (default) the budget curve's circuits and the circuit shown
            first, `"all"` every slider position, `"none"` only this circuit's (for the
            summary); the page says which positions have none.
    """

    target_class: int | None = None
    metric: str = "adjusted_logit"
    granularity: Granularity = "feature"
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    max_nodes_per_layer: int = 6
    max_json_edges: int = 100_000
    viewer: bool = True
    token_top_k: int | None = None
    readouts: Readouts = "curve"

    def __post_init__(self) -> None:
        check_readouts(self.readouts)
        if self.token_top_k is not None and self.granularity != "token":
            raise RRMUserError("token_top_k applies to token graphs: set granularity='token'")
        if self.token_top_k is not None and self.viewer:
            raise RRMUserError("the viewer needs dense edges; a token_top_k graph is traced "
                               "without it (viewer=False, --no-viewer)")


@dataclass
class TraceResult:
    """One traced image: what `trace` computed, in memory; `save` writes it as `rrm trace` does.

    Attributes:
        graph: The attribution graph (`Graph`).
        circuit: The circuit kept by circuit-tracer's influence pruning (`Circuit`).
        scores: circuit-tracer's replacement and completeness scores of the graph.
        readouts: `{"clean", "insertion", "deletion", "all_at_baseline"}` -> the target class's
            logit, adjusted logit, probability and the predicted class of that run.
        config: The settings (`TraceConfig`).
        baselines: Where the baselines came from (`ResolvedBaselines.description`).
        metadata: What the files record (model, release, baselines, the image's source).
        viewer: The viewer payload (None when traced with `viewer=False`).
        warning: Set when the baselines are not a dataset's medians (zero, or the median of
            the run's own inputs), with the `rrm baselines` command that computes them; shown
            by the CLI on stderr, in `summary.json` and on the viewer page.
    """

    graph: Graph
    circuit: Circuit
    scores: GraphScores
    readouts: dict[str, dict[str, Any]]
    config: TraceConfig
    baselines: str
    metadata: dict[str, Any]
    viewer: dict[str, Any] | None
    image: Tensor  # shown in the figure ([0, 1] RGB, on the CPU)
    reference_images: Tensor  # shown as the latents' top patches (as `image`)
    examples: dict  # (hook, latent) -> its top reference patches
    feature_classes: dict[str, Tensor]  # hook -> each latent's top class (feature lens)
    patch_size: int
    n_prefix: int
    warning: str | None = None

    @property
    def target_class(self) -> int:
        return self.graph.target_class

    def summary(self) -> dict[str, Any]:
        """What `summary.json` holds (the CLI prints it)."""
        graph, circuit = self.graph, self.circuit
        runs = {k: self.readouts[k] for k in ("insertion", "deletion", "all_at_baseline")}
        return {
            "target_class": graph.target_class, "metric": graph.metric, "value": graph.value,
            "clean": self.readouts["clean"], **runs,
            "circuit_nodes": circuit.node_count, "circuit_edges": len(circuit.edges),
            "graph_nodes": sum(len(layer) for layer in graph.layers) + len(graph.layers) + 1,
            "circuit_tracer_replacement_score": self.scores.replacement,
            "circuit_tracer_completeness_score": self.scores.completeness,
            "error_scores": graph.error_scores.tolist(),
            "feature_score_sum": [float(layer.scores.sum()) for layer in graph.layers],
            "warning": self.warning, "metadata": self.metadata,
        }

    def _figure(self, path: Path | None) -> Figure:
        cls, runs = self.graph.target_class, self.readouts
        return plot_circuit(
            self.graph, self.circuit, self.image, path=path, examples=self.examples,
            reference_images=self.reference_images, patch_size=self.patch_size,
            n_prefix=self.n_prefix, max_nodes_per_layer=self.config.max_nodes_per_layer,
            feature_classes=self.feature_classes,
            title=(f"class {cls}: {self.circuit.node_count} nodes keep "
                   f"{runs['insertion']['adjusted_logit']:.2f} of {self.graph.value:.2f} "
                   "adjusted logit"),
        )

    def figure(self) -> Figure:
        """The circuit figure (`circuit.png`) as a matplotlib `Figure`."""
        return self._figure(None)

    def html(self) -> str:
        """The self-contained viewer page: the same text `circuit.html` holds."""
        if self.viewer is None:
            raise RRMUserError("this image was traced with viewer=False: trace it again with "
                               "viewer=True for the viewer page")
        return render_html(self.viewer)

    def _repr_html_(self) -> str | None:
        # The page has its own scripts, styles and ids: an isolated frame keeps them apart from
        # the notebook and from other viewers on the same page.
        if self.viewer is None:
            return None
        return frame_html(self.html())

    def __repr__(self) -> str:
        s = self.summary()
        return (f"TraceResult(class {s['target_class']}, {s['metric']} {s['value']:.3f}; circuit "
                f"of {s['circuit_nodes']} nodes and {s['circuit_edges']} edges in a "
                f"{s['graph_nodes']}-node graph; baselines: {self.baselines})")

    def write(self, out_dir: str | Path) -> list[str]:
        """Write the files into `out_dir` (created; files replaced one by one); their names."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._figure(out_dir / "circuit.png")
        write_json(out_dir / "graph.json", graph_json(self.graph,
                                                      max_edges=self.config.max_json_edges))
        self.graph.save(out_dir / "graph.lossless")
        write_json(out_dir / "circuit.json", {
            **self.circuit.to_json_dict(),
            "thumbnails": {f"{h}/F{f}": [e._asdict() for e in ex]
                           for (h, f), ex in self.examples.items()},
        })
        write_json(out_dir / "summary.json", self.summary())
        if self.config.viewer:
            write_viewer(out_dir, self.viewer)
        return sorted(p.name for p in out_dir.iterdir() if p.is_file())

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write `graph.json`, `graph.lossless.{json,safetensors}` (`Graph.load`), `circuit.json`,
        `circuit.png`, `summary.json` and (traced with the viewer) `circuit.html` +
        `viewer.json` into `out_dir`, as a unit: built in a temporary sibling and renamed into
        place, as `rrm trace --out` does. An existing non-empty `out_dir` is replaced only if it
        is an earlier trace output, or with `overwrite=True`. Returns `out_dir`."""
        with output_directory(out_dir, command="trace", overwrite=overwrite,
                              option="out_dir") as tmp:
            self.write(tmp)
        return Path(out_dir)


def _shown_first_runs(
    viewer: Mapping[str, Any], node_masks: Sequence[Tensor]
) -> dict[str, dict[str, Any]] | None:
    """Insertion, deletion and all-at-baseline readouts from the payload, when the step shown
    first keeps exactly `node_masks` and was read out (else None)."""
    step = viewer["steps"][viewer["default_step"]]
    same = step["nodes"] == base64.b64encode(pack_bits(torch.cat(list(node_masks)))).decode()
    at_baseline = viewer["reference"].get("all_at_baseline")
    if not same or "runs" not in step or at_baseline is None:
        return None
    return {**{mode: dict(step["runs"][mode]) for mode in ("insertion", "deletion")},
            "all_at_baseline": dict(at_baseline)}


def _trace(
    model: nn.Module,
    saes: Mapping[str, SAE],
    image: Float[Tensor, "c h w"],
    *,
    baselines: Baselines,
    baselines_description: str,
    baselines_warning: str | None,
    reference_images: Tensor,
    config: TraceConfig,
    metadata: dict[str, Any],
    display: Callable[[Tensor], Tensor] | None,
    class_names: Sequence[str] | None,
    cards: Mapping[str, Any] | None,
) -> TraceResult:
    """Graph -> circuit-tracer pruning -> insertion / deletion of the circuit -> figure inputs
    and viewer payload, with every default already resolved."""
    batch = image[None]
    graph: Graph = attribute(
        model, saes, batch, baselines=baselines, classes=config.target_class,
        metric=config.metric, granularity=config.granularity, metadata=[metadata],
        engine=EngineConfig(token_top_k=config.token_top_k),
    )[0]
    pruned = prune_by_influence(graph, node_threshold=config.node_threshold,
                                edge_threshold=config.edge_threshold)
    circuit = Circuit.from_graph(graph, pruned.node_masks, edge_masks=pruned.edge_masks,
                                 logit_edge_mask=pruned.logit_edge_mask)
    cls = graph.target_class
    viewer, runs = None, None
    viewer_args = dict(
        model=model, saes=saes, image=image, baselines=baselines, display=display,
        class_names=class_names, cards=cards, readouts=config.readouts,
        title=f"{metadata.get('model', 'model')}: class {cls}", warning=baselines_warning,
        default_params={"node_threshold": config.node_threshold,
                        "edge_threshold": config.edge_threshold})
    if config.viewer and config.readouts != "none":
        # The circuit shown first is this circuit: its readouts (and the all-at-baseline run)
        # are rows of the viewer's batched forwards, not run again here.
        viewer = build_viewer(graph, **viewer_args)
        runs = _shown_first_runs(viewer, pruned.node_masks)
    if runs is None:
        empty = Circuit(circuit.hook_names, [torch.zeros_like(m) for m in circuit.latents],
                        torch.zeros_like(circuit.errors))
        rows = run_circuits_on_image(model, saes, image, [circuit, empty],
                                     baselines=baselines, deletion=[True, False])
        runs = {"insertion": image_readout(rows.insertion[0], cls),
                "deletion": image_readout(rows.deletion[0], cls),
                "all_at_baseline": image_readout(rows.insertion[1], cls)}
    if config.viewer and viewer is None:
        viewer = build_viewer(graph, all_at_baseline=runs["all_at_baseline"], **viewer_args)
    scores = graph_scores(graph)
    features = {h: circuit.layer_features(k) for k, h in enumerate(circuit.hook_names)}
    examples = top_patches(model, saes, reference_images, features)
    classes = {h: fc.top_classes[:, 0] for h, fc in feature_lens(model, saes, top_k=1).items()}
    show = display or (lambda x: x)
    return TraceResult(
        graph=graph, circuit=circuit, scores=scores,
        readouts={"clean": image_readout(graph.logits, cls), **runs}, config=config,
        baselines=baselines_description, metadata=metadata, viewer=viewer,
        image=show(image).cpu(), reference_images=show(reference_images).cpu(),
        examples=examples, feature_classes=classes, patch_size=model.cfg.patch_size,
        n_prefix=n_prefix_tokens(model), warning=baselines_warning)


def trace(
    model: nn.Module,
    saes: Mapping[str, SAE],
    image: Float[Tensor, "c h w"],
    *,
    baselines: Baselines | str | Path | None = None,
    config: TraceConfig | None = None,
    reference_images: Tensor | None = None,
    display: Callable[[Tensor], Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    cards: Mapping[str, Any] | str | Path | None = None,
    metadata: Mapping[str, Any] | None = None,
    **settings: Any,
) -> TraceResult:
    """Trace one image: its attribution graph, pruned circuit, the circuit's insertion /
    deletion readouts and circuit-tracer's scores, and the viewer page (`TraceResult`).

    Args:
        model: A HookedViT; loaded by `rrm_plugin.load_model`, its name gives the defaults below.
        saes: `{hook_name: SAE}` (`rrm_plugin.load_saes`, which records the release).
        image: One preprocessed image [c, h, w] (`load_images(...).images[0]`).
        baselines: A `Baselines`, a baselines file, or None: `resolve_baselines`'s documented
            order (the release's cached or shipped file, else zero for one image).
        config: `TraceConfig`; `**settings` override its fields (e.g. `target_class=3`).
        reference_images: Images whose top-activating patches illustrate the latents (default:
            the embedded model's held-out set, else the traced image).
        display: Model inputs -> [0, 1] RGB for the figure (default: the named model's own).
        class_names: For the viewer (default: the named hub model's).
        cards: Feature cards (a `cards.json` of `rrm features`, or its dict) for the viewer.
        metadata: Recorded in the files, after the model, release and baselines.
    """
    unknown = sorted(set(settings) - {f.name for f in fields(TraceConfig)})
    if unknown:
        raise TypeError(f"trace() got unknown settings {unknown}; TraceConfig has "
                        f"{[f.name for f in fields(TraceConfig)]}")
    config = replace(config or TraceConfig(), **settings)
    if image.ndim != 3:
        raise RRMUserError(f"trace takes one image [channels, height, width], got shape "
                           f"{list(image.shape)}")
    weight = next(model.parameters())
    image = image.to(weight.device, weight.dtype)
    if isinstance(baselines, Baselines):
        baselines.check(saes, model=model)
        resolved = ResolvedBaselines(baselines.to(weight.device), "given")
    else:
        resolved = resolve_baselines(model, saes, images=image[None], path=baselines)
    if reference_images is None:
        reference_images = held_out_images(model)
    if reference_images is None:
        reference_images = image[None]
    known = {"model": model_name_of(model), "release": release_of(saes),
             "baselines": resolved.description}
    return _trace(
        model, saes, image, baselines=resolved.baselines,
        baselines_description=resolved.description, baselines_warning=resolved.warning,
        reference_images=reference_images,
        config=config,
        metadata={**{k: v for k, v in known.items() if v is not None}, **(metadata or {})},
        display=display or display_of(model),
        class_names=class_names if class_names is not None else class_names_of(model),
        cards=read_cards(cards) if isinstance(cards, str | Path) else cards)


def trace_image(
    model: nn.Module,
    saes: Mapping[str, SAE],
    image: Float[Tensor, "c h w"],
    *,
    baselines: Baselines,
    out_dir: Path,
    reference_images: Tensor,
    config: TraceConfig = TraceConfig(),
    metadata: dict[str, Any] | None = None,
    display: Callable[[Tensor], Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    cards: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`trace` with every input given, written straight into `out_dir` (`TraceResult.write`);
    returns the summary with the names of the files written.

    `display` maps model inputs to [0, 1] RGB for the figure (e.g. undoing the normalisation).
    """
    result = _trace(model, saes, image, baselines=baselines,
                    baselines_description=(metadata or {}).get("baselines", "given"),
                    baselines_warning=None,
                    reference_images=reference_images, config=config, metadata=metadata or {},
                    display=display, class_names=class_names, cards=cards)
    files = result.write(out_dir)
    # Names, not paths: the CLI writes into a temporary folder that is renamed when done.
    return {**result.summary(), "files": files}
