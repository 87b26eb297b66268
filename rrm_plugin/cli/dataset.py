"""The options the dataset-level commands share (`--chunks`, `--keep-chunks`) and how their
parsed options become a workflow's options dataclass.

`faithfulness`, `baselines`, `lens`, `features` and `eval-saes` each call one function of
`rrm_plugin.workflows` (`rrm_plugin.workflows.dataset_run` documents the sharded, resumable run).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunks", type=Path, default=None, metavar="DIR",
                   help="folder of finished chunks (one file per batch of images, named by a "
                        "hash of the settings): a rerun with the same settings computes only "
                        "what is missing; default: OUT.chunks next to --out, removed after a "
                        "successful run")
    p.add_argument("--keep-chunks", action="store_true",
                   help="keep the chunk files after a successful run")


def options_of(args: argparse.Namespace, options_class: type) -> Any:
    """A workflow's options dataclass from the parsed options of the same names (every field is
    an option's `dest`, so the run key is the one of the options)."""
    import dataclasses

    return options_class(**{f.name: getattr(args, f.name)
                            for f in dataclasses.fields(options_class)})


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`device`, `chunks`, `keep_chunks` of a dataset workflow from the options."""
    return {"device": args.device, "chunks": args.chunks, "keep_chunks": args.keep_chunks}
