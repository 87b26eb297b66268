"""Rows that show themselves as a table: markdown in a terminal, HTML in a notebook.

Library functions return a `Table` instead of printing one; the `rrm` command prints it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from rrm_plugin.errors import RRMUserError


class Table(list):
    """A list of row dicts whose `repr` is a markdown table and whose `_repr_html_` is HTML.

    Args:
        rows: The rows (what the list holds).
        columns: The header.
        cells: One list of display strings per row, in `columns` order.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], *, columns: Sequence[str],
                 cells: Sequence[Sequence[str]]) -> None:
        if len(cells) != len(rows) or any(len(c) != len(columns) for c in cells):
            raise RRMUserError(f"a table of {len(rows)} rows and {len(columns)} columns needs as "
                             f"many cell rows of as many cells; got {[len(c) for c in cells]}")
        super().__init__(rows)
        self.columns = list(columns)
        self.cells = [list(map(str, c)) for c in cells]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.cells]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.markdown()

    __str__ = __repr__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in self.cells)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
