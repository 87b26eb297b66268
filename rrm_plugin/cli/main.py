"""`rrm` command line. Each sub-command lives in its own module with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Explicit registry: sub-command name -> module under rrm_plugin.cli.
COMMANDS: dict[str, str] = {
    "demo": "rrm_plugin.cli.demo",
    "train-model": "rrm_plugin.cli.train",
    "train-saes": "rrm_plugin.cli.train",
    "eval-saes": "rrm_plugin.cli.eval_saes",
    "baselines": "rrm_plugin.cli.baselines",
    "trace": "rrm_plugin.cli.trace",
    "faithfulness": "rrm_plugin.cli.faithfulness",
    "lens": "rrm_plugin.cli.lens",
    "list": "rrm_plugin.cli.listing",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrm", description="Residual replacement model circuits for vision transformers"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        importlib.import_module(module_name).add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
