"""Output folders written as a unit: commands build into a temporary sibling and swap it in.

`output_directory(out, command=...)` checks before any work that `out` can be written and is not
someone else's folder, yields a fresh temporary sibling, and at the end writes a manifest (which
command, which files) and renames the sibling into place. An interrupted run leaves `out` as it
was. An existing `out` is replaced only if it is empty or an earlier output of the same command,
unless `overwrite=True`. Messages name the folder as `option` (`--out` for the CLI, `out_dir` for
the library's `save` methods).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rrm_plugin.errors import (
    NotAFileError,
    NotAFolderError,
    NotWritableError,
    OutputExistsError,
    RRMUserError,
)
from rrm_plugin.io import check_not_shipped, swap_into_place, write_json

MANIFEST = "rrm-output.json"


def previous_command(out: Path) -> str | None:
    """The command that wrote `out` (from its manifest), or None."""
    try:
        return json.loads((Path(out) / MANIFEST).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def check_out_location(out: Path, *, inputs: Iterable[Path | str | None] = (),
                       option: str = "--out") -> None:
    """`out` is neither the current folder nor one above it, and holds none of the inputs:
    rrm replaces an output as a whole, which would remove them."""
    resolved = Path(out).resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        what = "the current folder" if resolved == cwd else "a folder above the current one"
        raise RRMUserError(f"{option} {out} is {what}, which rrm would replace as a whole; give a "
                           "new folder (e.g. --out ./results)")
    for path in inputs:
        if path is None:
            continue
        inside = Path(path).resolve()
        if inside == resolved or resolved in inside.parents:
            raise RRMUserError(f"{option} {out} holds the input {path}, which replacing "
                               f"{option} would remove; give another {option}")


def check_output_directory(out: Path, *, command: str, overwrite: bool = False,
                           inputs: Iterable[Path | str | None] = (),
                           option: str = "--out") -> Path:
    """Raise (before any work) unless `out` may be replaced by this command's output.

    `inputs`: the paths the command reads, none of which may lie inside `out`.
    """
    out = check_not_shipped(Path(out))
    check_out_location(out, inputs=inputs, option=option)
    again = "--overwrite" if option == "--out" else "overwrite=True"
    if out.exists() and not out.is_dir():
        raise NotAFolderError(f"{option} {out} is a file; expected a folder (new or empty)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        found = previous_command(out)
        if found != command:
            what = "no rrm output manifest" if found is None else f"output of `rrm {found}`"
            raise OutputExistsError(f"{option} {out} is a non-empty folder ({what}); give a new "
                                    f"folder or {again} to replace it")
    _check_parent_writable(out, option=option)
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):  # moving a folder needs both
        raise NotWritableError(f"{option} {out} is not writable, so it cannot be replaced")
    return out


def _check_parent_writable(out: Path, *, option: str) -> None:
    """The nearest existing folder above `out` is a folder we can create files in."""
    parent = out.resolve().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise NotAFolderError(f"{option} {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NotWritableError(f"{option} {out}: cannot create files in {existing} "
                               "(not writable)")


def check_out_file(out: Path, *, inputs: Iterable[Path | str | None] = (),
                   option: str = "--out") -> Path:
    """An output file (`eval-saes`, `baselines`): not a folder, its folder writable, not a
    shipped file, and holding none of the `inputs`."""
    out = Path(out)
    check_out_location(out, inputs=inputs, option=option)
    check_not_shipped(out)
    if out.is_dir():
        raise NotAFileError(f"{option} {out} is a folder; expected a file path")
    _check_parent_writable(out, option=option)
    return out


def check_chunk_folder(chunks: Path | str | None, out: Path | str | None) -> None:
    """A chunk folder (`--chunks`) is a folder or new, and not inside `out` (which is replaced
    as a whole, chunks included)."""
    if chunks is None:
        return
    chunks = Path(chunks)
    if chunks.exists() and not chunks.is_dir():
        raise NotAFolderError(f"--chunks {chunks} is a file; expected a folder")
    if out is not None:
        resolved, inside = Path(out).resolve(), chunks.resolve()
        if inside == resolved or resolved in inside.parents:
            raise RRMUserError(f"--chunks {chunks} is inside --out {out}, which is replaced as a "
                               "whole; give a chunk folder elsewhere")


@contextmanager
def output_directory(out: Path, *, command: str, overwrite: bool = False,
                     option: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder to write into; on success it becomes `out` (with a manifest)."""
    out = check_output_directory(out, command=command, overwrite=overwrite, option=option)
    try:
        out.resolve().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.partial."))
    except OSError as err:  # named for the folder the user gave, not the temporary one
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise NotWritableError(f"{option} {out}: cannot create files in "
                               f"{out.resolve().parent} ({err.strerror})") from err
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / MANIFEST, {"command": command, "files": files})
        swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

