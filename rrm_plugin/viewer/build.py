"""Build viewer pages: from a traced image (with the model) or from a saved trace folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.errors import MissingFileError, RRMUserError
from rrm_plugin.io import read_json, write_json
from rrm_plugin.viewer.cards import read_cards
from rrm_plugin.viewer.check import check_payload
from rrm_plugin.viewer.context import image_context
from rrm_plugin.viewer.payload import NODE_FEATURE, viewer_payload
from rrm_plugin.viewer.render import write_html, write_index
from rrm_plugin.viewer.steps import (
    DEFAULT_PARAMS,
    Readouts,
    check_readouts,
    default_step,
    readout_steps,
    viewer_steps,
)

PAGE, PAYLOAD, GRAPH_STEM = "circuit.html", "viewer.json", "graph.lossless"


def build_viewer(
    graph: Graph,
    *,
    model: nn.Module | None = None,
    saes: Mapping[str, SAE] | None = None,
    image: Tensor | None = None,
    baselines: Baselines | None = None,
    display: Callable[[Tensor], Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    cards: Mapping[str, Any] | None = None,
    all_at_baseline: Mapping[str, float] | None = None,
    title: str = "",
    default_params: Mapping[str, float] | None = None,
    warning: str | None = None,
    readouts: Readouts = "curve",
) -> dict[str, Any]:
    """The viewer payload of a graph; with the model, SAEs, image and baselines also the image,
    heat maps, feature lens and the steps' insertion / deletion readouts.

    Args:
        graph: Attribution graph (feature or token granularity).
        model: The HookedViT the graph was traced on (optional, with `saes`, `image`,
            `baselines`).
        display: Maps model inputs to [0, 1] RGB.
        class_names: Class names in logit order.
        cards: A `rrm-feature-cards/1` object.
        all_at_baseline: Readout with every latent at baseline (shown as a reference).
        title: Page title.
        default_params: Influence thresholds shown first.
        warning: A line the page shows prominently (e.g. that the baselines are not a
            dataset's medians); the payload's `"warning"` (null when None).
        readouts: Which slider positions get insertion / deletion readouts (two forwards per
            distinct circuit): `"curve"` the budget curve's circuits and the circuit shown
            first, `"all"` every position, `"none"` none (the page says which have none).
            Without all_at_baseline, it is computed with them (one more forward).
    """
    check_readouts(readouts)
    default = dict(default_params or DEFAULT_PARAMS)
    steps = viewer_steps(graph, default)
    context = None
    if model is not None:
        if saes is None or image is None or baselines is None:
            raise RRMUserError("build_viewer with a model needs saes=, image= and baselines= too")
        which = readout_steps(steps, readouts=readouts,
                              default_index=default_step(steps, default))
        context = image_context(model, saes, image, graph, steps, baselines=baselines,
                                display=display, class_names=class_names,
                                all_at_baseline=all_at_baseline, which=which)
    return viewer_payload(graph, steps, context=context, cards=cards, title=title,
                          default_params=default, warning=warning)


def merge_cards(payload: dict[str, Any], cards: Mapping[str, Any]) -> dict[str, Any]:
    """Replace the payload's feature cards by those of a cards file (keeping a computed lens
    where the file has none)."""
    by_feature = {(c.get("hook_name"), int(c.get("feature", -1))): c
                  for c in cards["cards"].values()}
    nodes = payload["nodes"]
    merged = {}
    for index, kind in enumerate(nodes["kind"]):
        if kind != NODE_FEATURE:
            continue
        hook = payload["layers"][nodes["layer"][index]]["hook_name"]
        old = payload["cards"].get(str(index), {})
        new = by_feature.get((hook, nodes["feature"][index]))
        if new is None:
            if old:
                merged[str(index)] = old
            continue
        card = {**new, "source": "feature cards"}
        if not card.get("lens_top") and old.get("lens_top"):
            card["lens_top"] = old["lens_top"]
        merged[str(index)] = card
    return {**payload, "cards": merged}


def write_viewer(out_dir: str | Path, payload: dict[str, Any]) -> Path:
    """`out_dir/circuit.html` plus the payload as `out_dir/viewer.json` (for `rrm view`)."""
    out_dir = Path(out_dir)
    # Compact: the ViT-B payload's columns hold ~10^5 numbers each (one line each if indented).
    write_json(out_dir / PAYLOAD, payload, compact=True)
    return write_html(out_dir / PAGE, payload)


def _trace_dirs(root: Path) -> list[Path]:
    if (root / f"{GRAPH_STEM}.json").is_file():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{GRAPH_STEM}.json"))


def view_directory(
    root: str | Path, *, cards_path: str | Path | None = None
) -> list[Path]:
    """(Re)write `circuit.html` of a trace folder, or of every trace folder under `root`
    (plus `root/index.html`); returns the pages written.

    Uses the folder's `viewer.json` (written by `rrm trace`) when present, else builds the page
    from `graph.lossless` alone (no image, heat maps or insertion / deletion numbers).
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"no folder {root}; expected an `rrm trace --out` folder")
    folders = _trace_dirs(root)
    if not folders:
        raise MissingFileError(f"{root} has no {GRAPH_STEM}.json, nor do its subfolders; "
                               "expected the --out folder of `rrm trace` (or `rrm demo`'s "
                               "circuits/ folder)")
    cards = read_cards(cards_path) if cards_path is not None else None
    pages, entries = [], []
    for folder in folders:
        graph = Graph.load(folder / GRAPH_STEM)
        if (folder / PAYLOAD).is_file():
            # An edited viewer.json must still describe this graph (checked like the graph).
            payload = read_json(folder / PAYLOAD)
            check_payload(payload, graph, where=str(folder / PAYLOAD),
                          graph_name=f"{GRAPH_STEM}.json")
            payload.setdefault("warning", None)  # written before the field existed
        else:
            payload = build_viewer(graph, title=f"{folder.name}: class {graph.target_class}")
        if cards is not None:
            payload = merge_cards(payload, cards)
        pages.append(write_viewer(folder, payload))
        step = payload["steps"][payload["default_step"]]
        entries.append({"href": f"{folder.relative_to(root).as_posix()}/{PAGE}"
                        if folder != root else PAGE, "label": folder.name,
                        "numbers": {"class": payload["target"]["class"],
                                    "circuit nodes": step["node_count"],
                                    "kept logit": round(step["runs"]["insertion"][
                                        "adjusted_logit"], 3) if "runs" in step else "–"}})
    if len(folders) > 1 or folders[0] != root:
        pages.append(write_index(root / "index.html", entries, title=f"circuits in {root.name}"))
    return pages
