"""`rrm list`: the models and SAE releases known by name."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="list the models and SAE releases that load by name")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.zoo.models import list_models, model_table
    from rrm_plugin.zoo.releases import list_releases, release_table

    print("Models (rrm_plugin.load_model(name), --model):")
    print(model_table(list_models()))
    print("\nSAE releases (rrm_plugin.load_saes(release), --release; SAE.from_pretrained(release, "
          "sae_id) after rrm_plugin.register_releases()):")
    print(release_table(list_releases()))
    return 0
