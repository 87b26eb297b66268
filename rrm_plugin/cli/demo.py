"""`rrm demo --out DIR`: the whole method on the embedded default, offline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.output import add_overwrite_arg


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="run the method end to end on the embedded digits-vit")
    p.add_argument("--out", type=checks.out_path, default=Path("rrm_demo"),
                   help="output folder, written as a unit (default ./rrm_demo)")
    add_overwrite_arg(p)
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """`--out`, before any heavy import; returns it to lock."""
    from rrm_plugin.cli.output import check_output_directory

    check_output_directory(args.out, command="demo", overwrite=args.overwrite)
    return [args.out]


def plot_predictions(images, labels, clean_pred, replaced_pred, path: Path | None = None, *,
                     n: int = 12):
    """The first `n` held-out digits with their predictions; returns the `Figure`."""
    from rrm_plugin.plotting import new_figure, save_figure

    fig = new_figure(figsize=(n, 4.6))
    axes = fig.subplots(2, n // 2)
    for ax, img, y, p_clean, p_rrm in zip(
        axes.flat, images, labels, clean_pred, replaced_pred, strict=False
    ):
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(f"y={int(y)} vit={int(p_clean)} rrm={int(p_rrm)}", fontsize=8)
        ax.axis("off")
    fig.suptitle("held-out digits: label, ViT prediction, pure replacement-model prediction")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.output import output_directory

    start = time.time()
    with output_directory(args.out, command="demo", overwrite=args.overwrite) as tmp:
        figures = _demo(tmp)
    print("circuit figures: " + ", ".join(str(args.out / p) for p in figures))
    print(f"demo finished in {time.time() - start:.0f}s; results in {args.out}")
    return 0


def _demo(out: Path) -> list[Path]:
    import torch

    import rrm_plugin
    from rrm_plugin.io import write_json, write_text
    from rrm_plugin.metrics.sae_evaluation import evaluate_saes, format_table

    model = rrm_plugin.load_model("digits-vit")
    saes = rrm_plugin.load_saes("rrm-digits-vit")
    test = rrm_plugin.load_test_set("digits-vit")
    print(f"digits-vit: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}; "
          f"SAEs at {list(saes)}; {len(test.labels)} held-out images")

    results = evaluate_saes(model, saes, test.images, test.labels)
    table = format_table(results)
    print(table)
    write_json(out / "sae_eval.json", results)
    write_text(out / "sae_eval.md", table + "\n")

    with torch.no_grad():
        clean_pred = model(test.images).argmax(-1)
        with rrm_plugin.splice_saes(model, saes, keep_error=False):
            rrm_pred = model(test.images).argmax(-1)
    plot_predictions(test.images, test.labels, clean_pred, rrm_pred, out / "predictions.png")

    # Circuits of a few held-out images, with their faithfulness (as `rrm trace`).
    from rrm_plugin.workflows.demo import describe_circuit, trace_demo

    circuits = trace_demo(out, n_images=3)
    for report in circuits["images"]:
        print(describe_circuit(report))

    # Class-embedding-space lens of tokens and SAE features (same code as `rrm lens`).
    from rrm_plugin.cli.main import build_parser

    # Fewer random orders than `rrm lens` (10 shared seeds + 3 per-image repeats) keep the demo
    # short; the random baselines are noisier for it (README: the full run's numbers).
    lens_args = build_parser().parse_args(["lens", "--out", str(out / "lens"), "--no-progress",
                                           "--random-shared-seeds", "2", "--random-repeats", "1"])
    lens_args.run(lens_args)
    return [Path(p) for p in circuits["figures"]]  # relative to `out`
