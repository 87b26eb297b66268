"""Execute a notebook top to bottom in a real Jupyter kernel (nbclient + ipykernel)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(path: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None,
            cell_timeout: int = 600) -> nbformat.NotebookNode:
    """The executed notebook; raises `nbclient.exceptions.CellExecutionError` on any cell error.

    The kernel is this interpreter (`kernel.json`'s `python` becomes `sys.executable`) with the
    repository first on its path, so it imports this checkout's `rrm_plugin`.
    """
    book = nbformat.read(path, as_version=4)
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    kernel_env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(paths),
                  "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    client = NotebookClient(book, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    client.execute(env=kernel_env)
    return book


if __name__ == "__main__":  # python tests/notebooks/run.py NOTEBOOK.ipynb OUT.ipynb
    nbformat.write(execute(Path(sys.argv[1])), sys.argv[2])
