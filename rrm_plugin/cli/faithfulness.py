"""`rrm faithfulness`: insertion / deletion curves and AUCs (RRM paper Table 1 protocol)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.cli.common import add_baselines_arg, add_images_arg, add_model_args
from rrm_plugin.cli.output import add_overwrite_arg


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="faithfulness of RRM circuits vs baselines (JSON + PNG)")
    add_model_args(p)
    add_images_arg(p, help_default="the embedded model's held-out set")
    add_baselines_arg(p)
    p.add_argument("--n-images", type=int, default=None,
                   help="correctly classified images to use (default: all)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the image subset and the random circuits (default 42, as the "
                        "paper)")
    p.add_argument("--metric", choices=["adjusted_logit", "logit"], default="adjusted_logit",
                   help="attributed quantity (default adjusted_logit)")
    # Checked in `run` against metrics.faithfulness.METHODS (the parser imports nothing heavy).
    p.add_argument("--methods", nargs="+", default=None,
                   help="circuit methods to compare (default: all)")
    p.add_argument("--normalisation", choices=["clamp", "abs"], default="clamp",
                   help="node ranking: negative scores count as zero (clamp, default) or by "
                        "absolute value (abs)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batched forward pass")
    p.add_argument("--out", type=Path, default=Path("faithfulness"),
                   help="output folder, written as a unit (default ./faithfulness): "
                        "faithfulness.json, .png, .md")
    add_overwrite_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from rrm_plugin.cli.common import (
        load_image_args,
        load_workspace,
        predicted_labels,
        resolve_baselines,
    )
    from rrm_plugin.cli.output import check_output_directory, output_directory
    from rrm_plugin.io import write_json, write_text
    from rrm_plugin.metrics.faithfulness import (
        METHODS,
        FaithfulnessConfig,
        evaluate_faithfulness,
        plot_faithfulness,
    )

    torch.set_num_threads(2)
    methods = list(METHODS) if args.methods is None else args.methods
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_output_directory(args.out, command="faithfulness", overwrite=args.overwrite)
    ws = load_workspace(args)
    loaded = load_image_args(args.images, ws)
    labels = loaded.labels
    if labels is None:
        # Unlabelled images: explain the predicted class (every image counts as "correct").
        labels = predicted_labels(ws.model, loaded.images, batch_size=args.batch_size)
        print(f"{len(labels)} unlabelled images: explaining each image's predicted class")
    baselines, how = resolve_baselines(args.baselines, ws, loaded.images)
    config = FaithfulnessConfig(n_images=args.n_images, seed=args.seed, metric=args.metric,
                                methods=tuple(methods), normalisation=args.normalisation,
                                batch_size=args.batch_size)
    result = evaluate_faithfulness(ws.model, ws.saes, loaded.images, labels,
                                   baselines=baselines, config=config)
    summary = result.to_json_dict()
    summary["metadata"] = {"model": ws.model_name, "release": ws.release, "baselines": how,
                           "files": [loaded.files[i] for i in result.image_indices]
                           if loaded.files else None}
    table = result.table()
    if result.influence_circuit:  # circuit-tracer influence pruning: printed, not only in JSON
        table += "\n\n| influence-pruned circuits (mean over images) | value |\n|---|---|\n"
        table += "\n".join(f"| {name} | {value:.3f} |"
                           for name, value in sorted(result.influence_circuit.items()))
    with output_directory(args.out, command="faithfulness", overwrite=args.overwrite) as tmp:
        write_json(tmp / "faithfulness.json", summary)
        plot_faithfulness(result, tmp / "faithfulness.png")
        write_text(tmp / "faithfulness.md", table + "\n")
    print(f"baselines: {how}")
    print(f"{len(result.image_indices)} correctly classified images of {ws.model_name}")
    print(table)
    for other in ("random", "neuron", "non_linearised"):
        if "rrm" in result.curves and other in result.curves:
            mean, se = result.margin("rrm", other)
            print(f"rrm - {other}: insertion AUC (adjusted logit) {mean:+.3f} +- {se:.3f} (s.e.)")
    print(f"results: {args.out / 'faithfulness.json'}, {args.out / 'faithfulness.png'}")
    return 0
