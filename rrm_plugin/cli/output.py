"""`--overwrite`, and the output folders of `rrm_plugin.runs.output` that every command writes."""

from __future__ import annotations

from rrm_plugin.runs.output import (  # noqa: F401  (the commands' and tests' names for them)
    MANIFEST,
    check_output_directory,
    output_directory,
    previous_command,
)


def add_overwrite_arg(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out folder that is not an earlier output of this "
                        "command")
