"""The faithfulness tables of docs/circuits.md, recomputed from a run's per-image records.

    python scripts/faithfulness_tables.py                       # print, from the shipped run
    python scripts/faithfulness_tables.py --ship RUN/faithfulness.json   # ship a new run
    python scripts/faithfulness_tables.py --update docs/circuits.md      # rewrite the tables

The shipped run is docs/faithfulness/faithfulness.json.gz, the output of
`rrm faithfulness --out RUN` (defaults: digits-vit, rrm-digits-vit, its shipped baselines,
seed 42). `--update` replaces the text between the docs' table markers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.io import read_json, write_json, write_text
from rrm_plugin.metrics.faithfulness_file import load_faithfulness
from rrm_plugin.metrics.faithfulness_tables import docs_tables, replace_tables

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "docs" / "faithfulness" / "faithfulness.json.gz"
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=SHIPPED, help="run to read (.json or .json.gz)")
    p.add_argument("--ship", type=Path, default=None, metavar="RUN_JSON",
                   help="verify a run's faithfulness.json and write it gzipped to the shipped path")
    p.add_argument("--update", type=Path, default=None, metavar="MARKDOWN",
                   help="rewrite the tables between the markers of this page")
    args = p.parse_args()
    if args.ship is not None:
        load_faithfulness(args.ship)  # shapes verified before anything is written
        write_json(SHIPPED, read_json(args.ship))
        args.json = SHIPPED
    tables = docs_tables(load_faithfulness(args.json))
    if args.update is not None:
        write_text(args.update, replace_tables(args.update.read_text(), tables))
    print(tables)


if __name__ == "__main__":
    main()
