"""`rrm faithfulness`: insertion / deletion curves and AUCs (RRM paper Table 1 protocol)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.cli.common import add_baselines_arg, add_images_arg, add_model_args


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from rrm_plugin.metrics.faithfulness import METHODS

    p = sub.add_parser(name, help="faithfulness of RRM circuits vs baselines (JSON + PNG)")
    add_model_args(p)
    add_images_arg(p, help_default="the embedded model's held-out set")
    add_baselines_arg(p)
    p.add_argument("--n-images", type=int, default=None,
                   help="correctly classified images to use (default: all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--metric", choices=["adjusted_logit", "logit"], default="adjusted_logit")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--normalisation", choices=["clamp", "abs"], default="clamp")
    p.add_argument("--batch-size", type=int, default=64, help="images per batched forward pass")
    p.add_argument("--out", type=Path, default=Path("faithfulness"))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from rrm_plugin.cli.common import (
        load_image_args,
        load_workspace,
        predicted_labels,
        resolve_baselines,
    )
    from rrm_plugin.io import write_json
    from rrm_plugin.metrics.faithfulness import (
        FaithfulnessConfig,
        evaluate_faithfulness,
        plot_faithfulness,
    )

    torch.set_num_threads(2)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    ws = load_workspace(args)
    loaded = load_image_args(args.images, ws)
    labels = loaded.labels
    if labels is None:
        # Unlabelled images: explain the predicted class (every image counts as "correct").
        labels = predicted_labels(ws.model, loaded.images, batch_size=args.batch_size)
        print(f"{len(labels)} unlabelled images: explaining each image's predicted class")
    baselines, how = resolve_baselines(args.baselines, ws, loaded.images)
    config = FaithfulnessConfig(n_images=args.n_images, seed=args.seed, metric=args.metric,
                                methods=tuple(args.methods), normalisation=args.normalisation,
                                batch_size=args.batch_size)
    result = evaluate_faithfulness(ws.model, ws.saes, loaded.images, labels,
                                   baselines=baselines, config=config)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = result.to_json_dict()
    summary["metadata"] = {"model": ws.model_name, "release": ws.release, "baselines": how,
                           "files": [loaded.files[i] for i in result.image_indices]
                           if loaded.files else None}
    write_json(args.out / "faithfulness.json", summary)
    plot_faithfulness(result, args.out / "faithfulness.png")
    table = result.table()
    (args.out / "faithfulness.md").write_text(table + "\n")
    print(f"baselines: {how}")
    print(f"{len(result.image_indices)} correctly classified images of {ws.model_name}")
    print(table)
    for other in ("random", "neuron", "non_linearised"):
        if "rrm" in result.curves and other in result.curves:
            mean, se = result.margin("rrm", other)
            print(f"rrm - {other}: insertion AUC (adjusted logit) {mean:+.3f} +- {se:.3f} (s.e.)")
    print(f"results: {args.out / 'faithfulness.json'}, {args.out / 'faithfulness.png'}")
    return 0
