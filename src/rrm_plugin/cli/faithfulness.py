"""`rrm faithfulness`: insertion / deletion curves and AUCs (RRM paper Table 1 protocol)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from rrm_plugin.metrics.faithfulness import METHODS

    p = sub.add_parser(name, help="faithfulness of RRM circuits vs baselines (JSON + PNG)")
    p.add_argument("--release", default="rrm-digits-vit", help="embedded SAE release")
    p.add_argument("--n-images", type=int, default=None,
                   help="correctly classified held-out images (default: all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--metric", choices=["adjusted_logit", "logit"], default="adjusted_logit")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--normalisation", choices=["clamp", "abs"], default="clamp")
    p.add_argument("--out", type=Path, default=Path("faithfulness"))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import rrm_plugin
    from rrm_plugin.attribution.baselines import load_release_baselines
    from rrm_plugin.io import write_json
    from rrm_plugin.metrics.faithfulness import (
        FaithfulnessConfig,
        evaluate_faithfulness,
        plot_faithfulness,
    )
    from rrm_plugin.zoo.releases import SAE_RELEASES

    torch.set_num_threads(2)
    if args.release not in SAE_RELEASES:
        raise KeyError(f"unknown SAE release {args.release!r}; shipped: {sorted(SAE_RELEASES)}")
    model_name = SAE_RELEASES[args.release].model_name
    model = rrm_plugin.load_model(model_name)
    saes = rrm_plugin.load_saes(args.release)
    baselines = load_release_baselines(args.release, saes)
    test = rrm_plugin.load_test_set(model_name)
    config = FaithfulnessConfig(n_images=args.n_images, seed=args.seed, metric=args.metric,
                                methods=tuple(args.methods), normalisation=args.normalisation)
    result = evaluate_faithfulness(model, saes, test.images, test.labels, baselines=baselines,
                                   config=config)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "faithfulness.json", result.to_json_dict())
    plot_faithfulness(result, args.out / "faithfulness.png")
    table = result.table()
    (args.out / "faithfulness.md").write_text(table + "\n")
    print(f"{len(result.image_indices)} correctly classified held-out images of {model_name}")
    print(table)
    for other in ("random", "neuron", "non_linearised"):
        if "rrm" in result.curves and other in result.curves:
            mean, se = result.margin("rrm", other)
            print(f"rrm - {other}: insertion AUC (adjusted logit) {mean:+.3f} +- {se:.3f} (s.e.)")
    print(f"results: {args.out / 'faithfulness.json'}, {args.out / 'faithfulness.png'}")
    return 0
