"""`rrm trace IMAGE_OR_INDEX --out DIR`: attribution graph, pruned circuit and its figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_baselines_arg, add_model_args
from rrm_plugin.cli.output import add_overwrite_arg
from rrm_plugin.errors import RRMUserError


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
    p.add_argument("--readouts", choices=["curve", "all", "none"], default=None,
                   help="which of the viewer's slider positions get insertion / deletion "
                        "readouts, two forward passes per distinct circuit: curve (default) the "
                        "node-budget curve's circuits and the circuit shown first; all every "
                        "position (about 80 circuits: minutes for a ViT-B on a CPU); none only "
                        "the traced circuit's (the summary's)")
    p.add_argument("--no-viewer", action="store_true",
                   help="skip circuit.html and viewer.json (and the slider circuits and their "
                        "readouts)")
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
    if args.no_viewer and args.readouts is not None:
        raise RRMUserError("--readouts is for the viewer; drop it or --no-viewer")
    check_output_directory(args.out, command="trace", overwrite=args.overwrite,
                           inputs=checks.inputs_of(args, "image", "baselines", "reference_images",
                                                   "feature_cards", "model", "release"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.workflows.trace import TraceConfig
    from rrm_plugin.workflows.trace_folder import trace_to_folder

    config = TraceConfig(target_class=args.target, metric=args.metric,
                         granularity=args.granularity, node_threshold=args.node_threshold,
                         edge_threshold=args.edge_threshold, viewer=not args.no_viewer,
                         token_top_k=args.token_top_k, readouts=args.readouts or "curve")
    result, files = trace_to_folder(
        args.image, args.out, model=args.model, release=args.release, device=args.device,
        dtype=args.dtype, baselines=args.baselines, reference_images=args.reference_images,
        feature_cards=args.feature_cards, config=config, overwrite=args.overwrite)
    summary = result.summary()
    print(f"baselines: {result.baselines}")
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
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
    print(f"files in {args.out}: {', '.join(files)}")
    return 0
