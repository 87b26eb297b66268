"""`rrm trace IMAGE_OR_INDEX --out DIR`: attribution graph, pruned circuit and its figure."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="trace the circuit of one image (held-out index or image file)")
    p.add_argument("image", help="index into the held-out test set, or a path to an image file")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--release", default="rrm-digits-vit", help="embedded SAE release")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: predicted)")
    p.add_argument("--metric", choices=["adjusted_logit", "logit"], default="adjusted_logit")
    p.add_argument("--granularity", choices=["feature", "token"], default="feature")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.set_defaults(run=run)


def resolve_image(spec: str, *, model_name: str, image_size: int):
    """`(image, metadata)` for a held-out index or an image file path."""
    import rrm_plugin
    from rrm_plugin.circuits.trace import load_image_file

    if spec.lstrip("-").isdigit():
        test = rrm_plugin.load_test_set(model_name)
        index, n = int(spec), len(test.labels)
        if not 0 <= index < n:
            raise IndexError(f"image index {index} out of range: the held-out set of {model_name} "
                             f"has {n} images (0..{n - 1})")
        return test.images[index], {"test_index": index, "label": int(test.labels[index])}
    return load_image_file(Path(spec), image_size=image_size), {"file": str(spec)}


def run(args: argparse.Namespace) -> int:
    import torch

    import rrm_plugin
    from rrm_plugin.attribution.baselines import load_release_baselines
    from rrm_plugin.circuits.trace import TraceConfig, trace_image
    from rrm_plugin.zoo.releases import SAE_RELEASES

    torch.set_num_threads(2)
    if args.release not in SAE_RELEASES:
        raise KeyError(f"unknown SAE release {args.release!r}; shipped: {sorted(SAE_RELEASES)}")
    model_name = SAE_RELEASES[args.release].model_name
    model = rrm_plugin.load_model(model_name)
    image, meta = resolve_image(args.image, model_name=model_name, image_size=model.cfg.image_size)
    saes = rrm_plugin.load_saes(args.release)
    baselines = load_release_baselines(args.release, saes)
    config = TraceConfig(target_class=args.target, metric=args.metric,
                         granularity=args.granularity, node_threshold=args.node_threshold,
                         edge_threshold=args.edge_threshold)
    summary = trace_image(
        model, saes, image, baselines=baselines, out_dir=args.out,
        reference_images=rrm_plugin.load_test_set(model_name).images, config=config,
        metadata={"model": model_name, "release": args.release, **meta},
    )
    print(f"class {summary['target_class']} ({summary['metric']} {summary['value']:.3f}); "
          f"circuit: {summary['circuit_nodes']} nodes, {summary['circuit_edges']} edges of a "
          f"{summary['graph_nodes']}-node graph")
    for mode in ("insertion", "deletion", "all_at_baseline"):
        r = summary[mode]
        print(f"  {mode:>15}: adjusted logit {r['adjusted_logit']:.3f}, probability "
              f"{r['probability']:.3f}, predicted {r['predicted_class']}")
    print(f"  replacement score {summary['replacement_score']:.3f}, completeness "
          f"{summary['completeness_score']:.3f}")
    print(f"files: {', '.join(summary['files'].values())}")
    return 0
