"""`rrm eval-saes`: SAELens-named metrics per layer and for the whole replacement model."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="evaluate an SAE release on the held-out images")
    p.add_argument("--release", default="rrm-digits-vit")
    p.add_argument("--model", default="digits-vit")
    p.add_argument("--out", type=Path, default=Path("sae_eval.json"), help="JSON file to write")
    p.set_defaults(run=run)


def evaluate_release(model_name: str, release: str) -> dict:
    import rrm_plugin
    from rrm_plugin.saes.evaluation import evaluate_saes

    model = rrm_plugin.load_model(model_name)
    saes = rrm_plugin.load_saes(release)
    test = rrm_plugin.load_test_set(model_name)
    return evaluate_saes(model, saes, test.images, test.labels)


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.io import write_json
    from rrm_plugin.saes.evaluation import format_table

    results = evaluate_release(args.model, args.release)
    print(format_table(results))
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0
