"""The model-dependent parts of the viewer: image, heat maps, feature lens, per-step readouts."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.attribution.targets import image_readout
from rrm_plugin.circuits.circuit import Circuit
from rrm_plugin.circuits.image_runs import run_circuits_on_image
from rrm_plugin.hosts.vit import n_prefix_tokens
from rrm_plugin.lens.features import feature_lens
from rrm_plugin.replacement.splice import splice_saes
from rrm_plugin.viewer.payload import ImageContext
from rrm_plugin.viewer.steps import CircuitStep


def png_bytes(image: Float[Tensor, "c h w"], *, min_size: int = 0) -> bytes:
    """A [0, 1] RGB (or grey) image as PNG bytes, upscaled by an integer factor to `min_size`."""
    from PIL import Image

    array = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    if array.shape[-1] == 1:
        array = array[..., 0]
    picture = Image.fromarray(np.ascontiguousarray(array))
    factor = max(1, -(-min_size // max(picture.size)))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor),
                                 Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def clean_sae_cache(
    model: nn.Module, saes: Mapping[str, SAE], image: Float[Tensor, "c h w"]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per hook, the SAE activations `[1, pos, d_sae]` and errors `[1, pos, d_model]` of the
    clean spliced run: one forward serves the heat maps and every readout's true errors."""
    names = {f"{h}.hook_sae_{kind}": (h, kind) for h in saes for kind in ("acts_post", "error")}
    with splice_saes(model, saes, keep_error=True):
        _, cache = model.run_with_cache(image[None], names_filter=lambda n: n in names)
    acts = {h: cache[f"{h}.hook_sae_acts_post"] for h in saes}
    return acts, {h: cache[f"{h}.hook_sae_error"] for h in saes}


@torch.no_grad()
def patch_activations(
    model: nn.Module, saes: Mapping[str, SAE], image: Float[Tensor, "c h w"], graph: Graph,
    *, acts: Mapping[str, Tensor] | None = None,
) -> Float[Tensor, "latent_nodes patches"]:
    """Each latent node's SAE activation on every patch of the image (token nodes: own patch).
    `acts`: the clean SAE activations per hook (`clean_sae_cache`), when already computed."""
    n_prefix = n_prefix_tokens(model)
    if acts is None:
        acts = clean_sae_cache(model, {layer.hook_name: saes[layer.hook_name]
                                       for layer in graph.layers}, image)[0]
    rows = []
    for layer in graph.layers:
        per_node = acts[layer.hook_name][0, n_prefix:].float().cpu()[:, layer.features].T
        if layer.tokens is not None:
            # A token node is active on its own patch only (prefix tokens on none).
            own = torch.zeros_like(per_node, dtype=torch.bool)
            on_patch = layer.tokens >= n_prefix
            own[torch.nonzero(on_patch)[:, 0], layer.tokens[on_patch] - n_prefix] = True
            per_node = torch.where(own, per_node, 0.0)
        rows.append(per_node)
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def lens_top(
    model: nn.Module, saes: Mapping[str, SAE], graph: Graph, *,
    class_names: Sequence[str] | None = None, top_k: int = 5,
) -> list[list[tuple[str, float]]] | None:
    """Feature-lens classes of each latent node (None when the model has no class head)."""
    try:
        lens = feature_lens(model, {layer.hook_name: saes[layer.hook_name]
                                    for layer in graph.layers},
                            top_k=min(top_k, model.cfg.n_classes))
    except (ValueError, TypeError, AttributeError):
        return None
    out = []
    for layer in graph.layers:
        fc = lens[layer.hook_name]
        classes = fc.top_classes[layer.features].tolist()
        scores = fc.top_scores[layer.features].tolist()
        for cs, ss in zip(classes, scores, strict=True):
            out.append([(class_names[c] if class_names else str(c), float(s))
                        for c, s in zip(cs, ss, strict=True)])
    return out


class StepRuns(NamedTuple):
    runs: list[dict[str, dict[str, float]] | None]
    """Per step, its insertion and deletion readouts (None where not computed)."""
    all_at_baseline: dict[str, float] | None
    """The readout with every latent and error at baseline (when asked for)."""


@torch.no_grad()
def step_runs(
    model: nn.Module, saes: Mapping[str, SAE], image: Float[Tensor, "c h w"], graph: Graph,
    steps: Sequence[CircuitStep], *, baselines: Baselines, which: Sequence[int] | None = None,
    all_at_baseline: bool = False, errors: Mapping[str, Tensor] | None = None,
    batch_size: int = 32,
) -> StepRuns:
    """Insertion and deletion readouts of the steps `which` (default: all), identical circuits
    run once, all as rows of batched forwards (`run_circuits_on_image`); with
    `all_at_baseline` (and any step to read), one more row: the empty circuit kept (its deletion
    is the clean run, not run)."""
    which = range(len(steps)) if which is None else which
    unique: dict[bytes, int] = {}
    circuits: list[Circuit] = []
    row_of = {}
    for i in which:
        key = steps[i].nodes.numpy().tobytes()
        if key not in unique:
            unique[key] = len(circuits)
            circuits.append(Circuit.from_graph(graph, steps[i].layer_masks(graph),
                                               list_edges=False))
        row_of[i] = unique[key]
    if not circuits:  # no readouts asked for: no forward at all
        return StepRuns([None] * len(steps), None)
    deletion = [True] * len(circuits)
    if all_at_baseline:
        masks = [torch.zeros(len(layer) + 1, dtype=torch.bool) for layer in graph.layers]
        circuits.append(Circuit.from_graph(graph, masks, list_edges=False))
        deletion.append(False)
    used = {layer.hook_name: saes[layer.hook_name] for layer in graph.layers}
    runs = run_circuits_on_image(model, used, image, circuits, baselines=baselines,
                                 batch_size=batch_size, deletion=deletion, errors=errors)
    cls = graph.target_class
    readout = {mode: [image_readout(row, cls) if ok else None
                      for row, ok in zip(getattr(runs, mode), ok_rows, strict=True)]
               for mode, ok_rows in (("insertion", [True] * len(circuits)),
                                     ("deletion", deletion))}
    per_step = [{mode: readout[mode][row_of[i]] for mode in readout} if i in row_of else None
                for i in range(len(steps))]
    return StepRuns(per_step, readout["insertion"][-1] if all_at_baseline else None)


def image_context(
    model: nn.Module, saes: Mapping[str, SAE], image: Float[Tensor, "c h w"], graph: Graph,
    steps: Sequence[CircuitStep], *, baselines: Baselines,
    display: Callable[[Tensor], Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    all_at_baseline: dict[str, float] | None = None,
    which: Sequence[int] | None = None,
) -> ImageContext:
    """Everything the page shows about the image that needs the model.

    Args:
        display: Maps model inputs to [0, 1] RGB (e.g. undoing the normalisation).
        class_names: Names of the classes in logit order (default: their indices).
        all_at_baseline: Readout with every latent at its baseline, if already computed (else
            computed as one more row of the steps' readouts, when there are any).
        which: Steps whose insertion / deletion readouts are computed (default: all).
    """
    show = display or (lambda x: x)
    patch = model.cfg.patch_size
    rows, cols = image.shape[-2] // patch, image.shape[-1] // patch
    reference = {"clean": image_readout(graph.logits, graph.target_class)}
    acts, errors = clean_sae_cache(
        model, {layer.hook_name: saes[layer.hook_name] for layer in graph.layers}, image)
    runs = step_runs(model, saes, image, graph, steps, baselines=baselines, which=which,
                     all_at_baseline=all_at_baseline is None, errors=errors)
    all_at_baseline = all_at_baseline if all_at_baseline is not None else runs.all_at_baseline
    if all_at_baseline is not None:
        reference["all_at_baseline"] = dict(all_at_baseline)
    return ImageContext(
        image_png=png_bytes(show(image), min_size=224), grid=(rows, cols),
        n_prefix=n_prefix_tokens(model),
        patch_activations=patch_activations(model, saes, image, graph, acts=acts),
        lens_top=lens_top(model, saes, graph, class_names=class_names),
        runs=runs.runs, reference=reference,
    )
