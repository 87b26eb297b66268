"""`rrm view GRAPH_DIR`: (re)write the interactive circuit viewer of a traced image."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.errors import MissingFileError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="write the self-contained HTML circuit viewer of a trace folder "
                                  "(or of every trace folder under it, plus index.html)")
    p.add_argument("graph_dir", type=Path,
                   help="an `rrm trace --out` folder, or a folder of them (e.g. rrm demo's "
                        "circuits/)")
    p.add_argument("--feature-cards", type=Path, default=None, metavar="PATH",
                   help="feature cards (cards.json of the feature dashboards) for the hover cards")
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """The paths, before any heavy import (the pages are written one by one, atomically)."""
    from rrm_plugin.cli import checks

    if not args.graph_dir.is_dir():  # worded as the viewer's own check
        what = "is a file" if args.graph_dir.exists() else "does not exist"
        raise MissingFileError(f"no folder {args.graph_dir} ({what}); expected an `rrm trace "
                                "--out` folder")
    checks.existing_file("--feature-cards", args.feature_cards, what="feature cards file")
    return []


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.viewer.build import view_directory

    pages = view_directory(args.graph_dir, cards_path=args.feature_cards)
    for page in pages:
        print(page)
    return 0
