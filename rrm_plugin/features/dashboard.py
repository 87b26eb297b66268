"""Feature dashboards: every feature of every SAE of a release over an image set.

`build_dashboards` collects the activations (`collect_top_activations`), the feature lens
(`rrm_plugin.lens.features`) and the circuit participation over the images' RRM graphs
(`circuit_participation`) and `write_dashboards` writes

- `features.json`: every number (densities, histograms, top images, lens scores, circuits);
- `cards.json`: one card per feature in the shared `rrm-feature-cards/1` schema (read by the
  circuit viewer), top images as PNG data URIs with the activating patches highlighted;
- `contact_sheet_layer{L}.png`: the top images of every feature of layer L;
- `density_layer{L}.png`: the distribution of feature densities of layer L;
- `dashboard_layer{L}.html`: self-contained page per layer (images, heat maps, histograms).

Layers are numbered by the SAE's position in the release, as the graph node ids (`L{k}/F{i}`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from rrm_plugin.attribution.build import attribute
from rrm_plugin.errors import RRMUserError
from rrm_plugin.features.activations import TopActivations, collect_top_activations
from rrm_plugin.features.circuits import (
    CircuitParticipation,
    participation_from_sums,
    participation_sums,
)
from rrm_plugin.features.render import (
    contact_sheet,
    display_images,
    heat_map,
    highlight,
    patch_grid,
    png_data_uri,
    to_uint8,
    write_png,
)
from rrm_plugin.hosts.vit import n_prefix_tokens
from rrm_plugin.io import _atomic, write_json
from rrm_plugin.lens.features import feature_class_scores
from rrm_plugin.plotting import new_figure, save_figure
from rrm_plugin.runs.sharded import map_batches

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CARDS_SCHEMA = "rrm-feature-cards/1"
LENS_TOP = 5
CARD_IMAGES = 8


@dataclass
class FeatureDashboards:
    """Everything measured about the features of one release over one image set.

    Args:
        model_name: Model name (for the records).
        release: SAE release name.
        hook_names: SAE hook points, in layer order.
        top: `{hook_name: TopActivations}`.
        lens: `{hook_name: [d_sae, n_classes]}` feature-lens class scores.
        class_names: Name of every class, in logit order.
        circuits: Circuit participation over the images' graphs, or None if not computed.
        n_prefix: Tokens before the patches (CLS, registers).
        images: The image set (kept to draw the top images).
        files: Optional file name of every image.
        types: Optional `{hook_name: [type per feature]}` (measured feature types).
        layer_ids: Layer number of each SAE in its release (default 0, 1, ...).
    """

    model_name: str
    release: str
    hook_names: list[str]
    top: dict[str, TopActivations]
    lens: dict[str, Float[Tensor, "d_sae n_classes"]]
    class_names: list[str]
    circuits: CircuitParticipation | None
    n_prefix: int
    images: Tensor
    files: list[str] | None = None
    types: dict[str, list[str | None]] | None = None
    layer_ids: list[int] | None = None

    def layer_id(self, k: int) -> int:
        return k if self.layer_ids is None else self.layer_ids[k]


def build_dashboards(
    model,
    saes: Mapping[str, SAE],
    images: Float[Tensor, "n c h w"],
    *,
    model_name: str,
    release: str,
    class_names: Sequence[str] | None = None,
    baselines=None,
    n_circuit_images: int | None = None,
    k: int = CARD_IMAGES,
    batch_size: int = 64,
    files: Sequence[str] | None = None,
    layer_ids: Sequence[int] | None = None,
    progress: bool = True,
) -> FeatureDashboards:
    """Measure every feature of `saes` over `images`.

    Args:
        model: HookedViT with a class head.
        saes: `{hook_name: SAE}` in layer order (consecutive `blocks.<l>.hook_resid_post`).
        images: Preprocessed images.
        model_name: Model name stored in the records.
        release: Release name stored in the records.
        class_names: Class names (default: the class indices as strings).
        baselines: Attribution baselines; None skips the circuit statistics.
        n_circuit_images: Attribute only the first N images (default: all).
        k: Top images per feature.
        batch_size: Images per forward pass (activations and attribution).
        files: File name of every image, if loaded from files.
        layer_ids: Layer number of each SAE in its release (default 0, 1, ...).
        progress: Show progress bars.
    """
    n_classes = model.cfg.n_classes
    names = [str(c) for c in range(n_classes)] if class_names is None else list(class_names)
    if len(names) != n_classes:
        raise RRMUserError(f"got {len(names)} class names for a model with {n_classes} classes")
    if files is not None and len(files) != len(images):
        raise RRMUserError(f"got {len(files)} file names for {len(images)} images")
    top = collect_top_activations(model, saes, images, k=k, batch_size=batch_size,
                                  progress=progress)
    lens = {h: s.cpu() for h, s in feature_class_scores(model, saes).items()}
    circuits = None
    if baselines is not None:
        n = len(images) if n_circuit_images is None else n_circuit_images
        if not 1 <= n <= len(images):
            raise RRMUserError(f"n_circuit_images must be in [1, {len(images)}], got {n}")
        device = next(model.parameters()).device

        def batch(sl: slice) -> dict[str, Tensor]:
            graphs = attribute(model, saes, images[sl].to(device), baselines=baselines)
            return participation_sums(graphs)

        parts = map_batches(batch, n=n, batch_size=batch_size, name="circuits",
                            progress=progress)
        circuits = participation_from_sums(parts, hook_names=list(saes))
    return FeatureDashboards(
        model_name=model_name, release=release, hook_names=list(saes), top=top, lens=lens,
        class_names=names, circuits=circuits, n_prefix=n_prefix_tokens(model),
        images=images.detach().cpu(), files=None if files is None else list(files),
        layer_ids=None if layer_ids is None else list(layer_ids),
    )


# ---- records ------------------------------------------------------------------------------

def _floats(t: Tensor, digits: int = 6) -> list:
    return [round(float(v), digits) for v in t.flatten().tolist()] if t.ndim <= 1 else \
        [_floats(row, digits) for row in t]


def _neighbours(features: Tensor, weights: Tensor, layer: int) -> list[list[dict[str, Any]]]:
    return [[{"layer": layer, "feature": int(f), "weight": round(float(w), 6)}
             for f, w in zip(fs.tolist(), ws.tolist(), strict=True) if f >= 0]
            for fs, ws in zip(features, weights, strict=True)]


def feature_records(dash: FeatureDashboards) -> dict[str, Any]:
    """`features.json`: every number, per layer as columns over features."""
    layers = []
    for k, hook in enumerate(dash.hook_names):
        t, scores = dash.top[hook], dash.lens[hook]
        lens_top = scores.topk(min(LENS_TOP, scores.shape[1]), dim=1)
        record: dict[str, Any] = {
            "layer": dash.layer_id(k), "hook_name": hook, "d_sae": t.d_sae, "n_tokens": t.n_tokens,
            "density_tokens": _floats(t.token_density), "density_images": _floats(t.image_density),
            "max_activation": _floats(t.max_activation),
            "mean_activation": _floats(t.mean_activation),
            "dead": int((t.image_density == 0).sum()),
            "histogram_log10_edges": _floats(t.bin_edges, 4),
            "histogram": t.histogram.tolist(),
            "top_images": t.indices.tolist(), "top_activations": _floats(t.values),
            "lens_scores": _floats(scores), "lens_top_classes": lens_top.indices.tolist(),
        }
        if dash.files is not None:
            record["top_image_files"] = [[dash.files[i] for i in row] for row in
                                         t.indices.tolist()]
        c = dash.circuits
        if c is not None:
            up, down = c.upstream(k), c.downstream(k)
            record["circuits"] = {
                "count": c.count[k].tolist(), "positive": c.positive[k].tolist(),
                "negative": c.negative[k].tolist(), "score_sum": _floats(c.score_sum[k]),
                "upstream": _neighbours(*up, dash.layer_id(k) - 1),
                "downstream": _neighbours(*down, dash.layer_id(k) + 1),
            }
            if k == len(dash.hook_names) - 1:
                record["circuits"]["logit_edge_sum"] = _floats(c.logit_edges)
        if dash.types is not None:
            record["type"] = dash.types[hook]
        layers.append(record)
    return {
        "format": "rrm-features/1", "model": dash.model_name, "release": dash.release,
        "n_images": len(dash.images), "class_names": dash.class_names,
        "n_circuit_graphs": None if dash.circuits is None else dash.circuits.n_graphs,
        "layers": layers,
    }


def _tiles(dash: FeatureDashboards, hook: str, *, size: int, count: int) -> tuple[Tensor, Tensor]:
    """Highlighted images and heat maps `[d_sae, count, size, size, 3]` of the top images."""
    t = dash.top[hook]
    count = min(count, t.values.shape[1])
    idx = t.indices[:, :count]
    pics = display_images(dash.images[idx.flatten()])
    grids = patch_grid(t.maps[:, :count], n_prefix=dash.n_prefix).flatten(0, 1)
    # One colour scale per feature: its largest activation over the set.
    vmax = t.max_activation[:, None].expand(-1, count).flatten()
    lit = highlight(pics, grids, size=size, vmax=vmax)
    heat = heat_map(grids, size=size, vmax=vmax)
    # Images where the feature does not fire at all are blanked (there is nothing to show).
    fired = (t.values[:, :count] > 0).flatten()[:, None, None, None].float()
    shape = (t.d_sae, count, size, size, 3)
    return (lit * fired + (1 - fired)).reshape(shape), (heat * fired + (1 - fired)).reshape(shape)


def _tile_size(image_size: int, target: int) -> int:
    return max(image_size, (target // image_size) * image_size) if image_size < target else target


def feature_cards(dash: FeatureDashboards, *, tile: int = 72) -> dict[str, Any]:
    """`cards.json` in the shared `rrm-feature-cards/1` schema."""
    size = _tile_size(dash.images.shape[-1], tile)
    cards = {}
    for k, hook in enumerate(dash.hook_names):
        t, scores = dash.top[hook], dash.lens[hook]
        lit, _ = _tiles(dash, hook, size=size, count=CARD_IMAGES)
        pixels = to_uint8(lit)
        lens_top = scores.topk(min(LENS_TOP, scores.shape[1]), dim=1)
        layer = dash.layer_id(k)
        for f in range(t.d_sae):
            cards[f"{layer}:{f}"] = {
                "layer": layer, "feature": f, "hook_name": hook,
                "density_tokens": float(t.token_density[f]),
                "density_images": float(t.image_density[f]),
                "max_activation": float(t.max_activation[f]),
                "lens_top": [{"class": dash.class_names[c], "score": round(float(s), 6)}
                             for c, s in zip(lens_top.indices[f].tolist(),
                                             lens_top.values[f].tolist(), strict=True)],
                "top_images": [{"png": png_data_uri(pixels[f, j]),
                                "activation": float(t.values[f, j])}
                               for j in range(pixels.shape[1]) if t.values[f, j] > 0],
                "type": None if dash.types is None else dash.types[hook][f],
            }
    return {"schema": CARDS_SCHEMA, "model": dash.model_name, "release": dash.release,
            "cards": cards}


def _density_figure(dash: FeatureDashboards, hook: str, path: Path | None = None) -> Figure:

    t = dash.top[hook]
    fig = new_figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    for ax, values, what in ((axes[0], t.token_density, "tokens"),
                             (axes[1], t.image_density, "images")):
        live = values[values > 0]
        ax.hist(live.log10().numpy(), bins=30, color="tab:blue")
        ax.set_xlabel(f"log10 fraction of {what} where the feature fires")
        ax.set_ylabel("features")
        ax.set_title(f"{hook}: {int((values == 0).sum())} of {len(values)} never fire")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _histogram_svg(counts: list[int], width: int = 160, height: int = 40) -> str:
    top = max(max(counts), 1)
    bar = width / len(counts)
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - c / top * height:.1f}" width="{bar:.1f}" '
        f'height="{c / top * height:.1f}"/>' for i, c in enumerate(counts) if c)
    return (f'<svg width="{width}" height="{height}" class="hist"><g fill="#3673b0">{rects}</g>'
            "</svg>")


_STYLE = """body{font-family:sans-serif;font-size:12px;margin:8px}
.card{display:inline-block;vertical-align:top;border:1px solid #ccc;margin:3px;padding:4px;
width:360px}.card img{image-rendering:pixelated;margin:1px}.hist{border-bottom:1px solid #999}
h3{margin:2px 0;font-size:13px}.dead{color:#999}"""


def _layer_html(dash: FeatureDashboards, k: int, records: dict[str, Any],
                cards: dict[str, Any]) -> str:
    hook, layer = dash.hook_names[k], dash.layer_id(k)
    rec = records["layers"][k]
    t = dash.top[hook]
    _, heat = _tiles(dash, hook, size=_tile_size(dash.images.shape[-1], 40), count=4)
    heat_px = to_uint8(heat)
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(hook)} features</title>"
             f"<style>{_STYLE}</style><h2>{html.escape(dash.release)} layer {layer} "
             f"({html.escape(hook)}): {t.d_sae} features over {t.n_images} images</h2>"
             "<p>Each card: top images (activating patches bright and tinted, the rest dimmed), "
             "heat maps of the first four, log10 histogram of nonzero token activations (edges "
             f"10^{rec['histogram_log10_edges'][0]:g} to 10^{rec['histogram_log10_edges'][-1]:g}),"
             " feature-lens classes and circuit participation.</p>"]
    for f in range(t.d_sae):
        card = cards["cards"][f"{layer}:{f}"]
        imgs = "".join(f'<img src="{im["png"]}" title="{im["activation"]:.3f}">'
                       for im in card["top_images"])
        heats = "".join(f'<img src="{png_data_uri(heat_px[f, j])}">'
                        for j in range(heat_px.shape[1]) if t.values[f, j] > 0)
        lens = ", ".join(f"{html.escape(x['class'])} {x['score']:.2f}" for x in card["lens_top"])
        circ = ""
        if "circuits" in rec:
            c = rec["circuits"]
            ups = ", ".join(f"L{u['layer']}/F{u['feature']} {u['weight']:+.3f}"
                            for u in c["upstream"][f]) or "-"
            downs = ", ".join(f"L{d['layer']}/F{d['feature']} {d['weight']:+.3f}"
                              for d in c["downstream"][f]) or "-"
            circ = (f"<br>circuits: {c['count'][f]} of {records['n_circuit_graphs']} "
                    f"(+{c['positive'][f]} / -{c['negative'][f]})<br>upstream: {ups}"
                    f"<br>downstream: {downs}")
        kind = "" if card["type"] is None else f" · type {html.escape(card['type'])}"
        dead = " dead" if card["density_images"] == 0 else ""
        parts.append(
            f'<div class="card{dead}"><h3>L{layer}/F{f}{kind}</h3>{imgs}<br>{heats}<br>'
            f"{_histogram_svg(rec['histogram'][f])}<br>density: tokens "
            f"{card['density_tokens']:.4f}, images {card['density_images']:.3f}; max "
            f"{card['max_activation']:.3f}<br>lens: {lens}{circ}</div>")
    return "".join(parts)


def write_dashboards(dash: FeatureDashboards, out_dir: Path, *, sheet_columns: int = 16,
                     max_sheet_features: int = 1024, progress: bool = True) -> list[Path]:
    """Write features.json, cards.json, and per layer a contact sheet, density figure and page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = feature_records(dash)
    cards = feature_cards(dash)
    written = [write_json(out / "features.json", records), write_json(out / "cards.json", cards)]
    for k, hook in enumerate(tqdm(dash.hook_names, desc="figures", disable=not progress)):
        t = dash.top[hook]
        shown = min(t.d_sae, max_sheet_features)
        lit, _ = _tiles(dash, hook, size=_tile_size(dash.images.shape[-1], 24), count=4)
        labels = [f"F{f}: {float(t.image_density[f]):.2f}" for f in range(shown)]
        sheet = contact_sheet(lit[:shown], labels, columns=sheet_columns)
        layer = dash.layer_id(k)
        written.append(write_png(out / f"contact_sheet_layer{layer}.png", sheet))
        _density_figure(dash, hook, out / f"density_layer{layer}.png")
        written.append(out / f"density_layer{layer}.png")
        page = _layer_html(dash, k, records, cards)
        written.append(_atomic(out / f"dashboard_layer{layer}.html",
                               lambda tmp, page=page: tmp.write_text(page)))
    return written
