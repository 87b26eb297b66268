"""`rrm trace IMAGE_OR_INDEX --out DIR`: attribution graph, pruned circuit and its figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_baselines_arg, add_model_args
from rrm_plugin.cli.output import add_overwrite_arg
from rrm_plugin.errors import OutOfRangeError, RRMUserError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="trace the circuit of one image (held-out index or image file)")
    p.add_argument("image", help="image file (PNG/JPEG), or an index into the embedded model's "
                                 "held-out test set")
    p.add_argument("--out", type=checks.out_path, required=True,
                   help="output folder (written as a unit: graph.json, graph.lossless.json + "
                        ".safetensors, circuit.json, circuit.png, summary.json)")
    add_overwrite_arg(p)
    add_model_args(p)
    add_baselines_arg(p)
    p.add_argument("--reference-images", nargs="+", default=None, metavar="PATH",
                   help="images for the figure's top-activating patches (default: the embedded "
                        "held-out set, else the traced image)")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: predicted)")
    p.add_argument("--metric", choices=["adjusted_logit", "logit"], default="adjusted_logit",
                   help="attributed quantity (default adjusted_logit: logit minus mean logit)")
    p.add_argument("--granularity", choices=["feature", "token"], default="feature",
                   help="graph nodes: latents summed over tokens, or (token, latent) pairs")
    p.add_argument("--token-top-k", type=int, default=None, metavar="K",
                   help="token graphs: keep each node's K strongest in-edges (plus its error "
                        "edge) as sparse matrices, so ViT-B-sized token graphs fit in memory; "
                        "needs --granularity token and --no-viewer")
    p.add_argument("--node-threshold", type=float, default=0.8,
                   help="influence pruning: fraction of node influence kept (default 0.8)")
    p.add_argument("--edge-threshold", type=float, default=0.98,
                   help="influence pruning: fraction of edge influence kept (default 0.98)")
    p.add_argument("--feature-cards", type=Path, default=None, metavar="PATH",
                   help="feature cards (cards.json of the feature dashboards) for the viewer's "
                        "hover cards (default: computed from the traced image)")
    p.add_argument("--no-viewer", action="store_true",
                   help="skip circuit.html, whose slider readouts cost two forward passes per "
                        "distinct circuit of the sliders (minutes for a ViT-B on a CPU)")
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock."""
    from rrm_plugin.cli.output import check_output_directory

    checks.model_args(args)
    if args.image.lstrip("-").isdigit():
        checks.at_least("the image index", int(args.image), 0)
    else:
        checks.image_paths(None, [args.image])
    checks.existing_file("--baselines", args.baselines, what="baselines file")
    checks.image_paths("--reference-images", args.reference_images)
    checks.existing_file("--feature-cards", args.feature_cards, what="feature cards file")
    checks.at_least("--target", args.target, 0)
    for name in ("node_threshold", "edge_threshold"):
        checks.in_range(f"--{name.replace('_', '-')}", getattr(args, name), low=0, high=1,
                        low_open=True)
    checks.at_least("--token-top-k", args.token_top_k)
    if args.token_top_k is not None and (args.granularity != "token" or not args.no_viewer):
        raise RRMUserError("--token-top-k needs --granularity token and --no-viewer (the viewer "
                           "needs dense edge matrices)")
    if args.no_viewer and args.feature_cards:
        raise RRMUserError("--feature-cards is for the viewer; drop it or --no-viewer")
    check_output_directory(args.out, command="trace", overwrite=args.overwrite,
                           inputs=checks.inputs_of(args, "image", "baselines", "reference_images",
                                                   "feature_cards", "model", "release"))
    return [args.out]


def resolve_image(spec: str, ws):
    """`(image [c, h, w], metadata)` for a held-out index or an image file path."""
    import rrm_plugin
    from rrm_plugin.cli.common import load_image_args
    from rrm_plugin.zoo.models import MODELS

    if spec.lstrip("-").isdigit():
        if ws.model_name not in MODELS:
            raise RRMUserError(f"an image index needs an embedded model; {ws.model_name!r} has no "
                               "held-out set: give an image file")
        test = rrm_plugin.load_test_set(ws.model_name)
        index, n = int(spec), len(test.labels)
        if not 0 <= index < n:
            raise OutOfRangeError(f"image index {index} out of range: the held-out set of "
                                  f"{ws.model_name} has {n} images (0..{n - 1})")
        image = test.images[index].to(ws.device, next(ws.model.parameters()).dtype)
        return image, {"test_index": index, "label": int(test.labels[index])}
    loaded = load_image_args([spec], ws)
    if len(loaded.images) != 1:
        raise RRMUserError(f"{spec} names {len(loaded.images)} images; trace takes one image file")
    return loaded.images[0], {"file": str(spec)}


def run(args: argparse.Namespace) -> int:
    import rrm_plugin
    from rrm_plugin.cli.common import (
        load_image_args,
        load_workspace,
        model_preprocessing,
        resolve_baselines,
    )
    from rrm_plugin.cli.output import output_directory
    from rrm_plugin.workflows.trace import TraceConfig, trace_image
    from rrm_plugin.zoo.models import MODELS

    ws = load_workspace(args)
    image, meta = resolve_image(args.image, ws)
    baselines, how = resolve_baselines(args.baselines, ws, image[None])
    if args.reference_images:
        reference = load_image_args(args.reference_images, ws).images
    elif ws.model_name in MODELS:
        reference = rrm_plugin.load_test_set(ws.model_name).images.to(image)
    else:
        reference = image[None]
    from rrm_plugin.viewer.cards import read_cards
    from rrm_plugin.zoo.hub_models import HUB_MODELS

    cards = read_cards(args.feature_cards) if args.feature_cards else None
    names = HUB_MODELS[ws.model_name].class_names() if ws.model_name in HUB_MODELS else None
    config = TraceConfig(target_class=args.target, metric=args.metric,
                         granularity=args.granularity, node_threshold=args.node_threshold,
                         edge_threshold=args.edge_threshold, viewer=not args.no_viewer,
                         token_top_k=args.token_top_k)
    with output_directory(args.out, command="trace", overwrite=args.overwrite) as tmp:
        summary = trace_image(
            ws.model, ws.saes, image, baselines=baselines, out_dir=tmp,
            reference_images=reference, config=config,
            metadata={"model": ws.model_name, "release": args.release, "baselines": how, **meta},
            display=model_preprocessing(ws.model_name, ws.model).to_display,
            class_names=names, cards=cards,
        )
    print(f"baselines: {how}")
    print(f"class {summary['target_class']} ({summary['metric']} {summary['value']:.3f}); "
          f"circuit: {summary['circuit_nodes']} nodes, {summary['circuit_edges']} edges of a "
          f"{summary['graph_nodes']}-node graph")
    for mode in ("insertion", "deletion", "all_at_baseline"):
        r = summary[mode]
        print(f"  {mode:>15}: adjusted logit {r['adjusted_logit']:.3f}, probability "
              f"{r['probability']:.3f}, predicted {r['predicted_class']}")
    print(f"  circuit-tracer's replacement score "
          f"{summary['circuit_tracer_replacement_score']:.3f}, completeness score "
          f"{summary['circuit_tracer_completeness_score']:.3f} (not the RRM paper's Table 1)")
    print(f"files in {args.out}: {', '.join(summary['files'])}")
    return 0
