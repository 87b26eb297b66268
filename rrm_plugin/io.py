"""Atomic writes and verified reads of safetensors and JSON files.

torch and safetensors are imported where tensors are read or written, so the CLI's checks of
output paths (which use this module) run before any heavy import.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrm_plugin.errors import CorruptFileError, MissingFileError, NotWritableError

if TYPE_CHECKING:
    import torch


# The package's shipped weights are read-only for every command and API (issue 15): training and
# baselines write elsewhere. Maintainers regenerating them set RRM_PLUGIN_WRITE_SHIPPED=1.
SHIPPED_DIR = Path(__file__).resolve().parent / "zoo" / "weights"
WRITE_SHIPPED_ENV = "RRM_PLUGIN_WRITE_SHIPPED"


def check_not_shipped(path: Path) -> Path:
    """Raise PermissionError if `path` lies inside the package's shipped weights."""
    resolved = Path(path).resolve()
    if os.environ.get(WRITE_SHIPPED_ENV) != "1" and (
        resolved == SHIPPED_DIR or SHIPPED_DIR in resolved.parents
    ):
        raise NotWritableError(
            f"refusing to write {path}: it is inside rrm-plugin's shipped files ({SHIPPED_DIR}), "
            "which no command changes; write to another folder (--out)")
    return Path(path)


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def not_writable(path: Path, err: OSError) -> OSError:
    """The error for a write into an unwritable folder, naming the path the user gave (not the
    temporary sibling the write went to); other OS errors are returned unchanged."""
    if err.errno not in _NOT_WRITABLE:
        return err
    return NotWritableError(f"cannot write {path}: its folder {Path(path).parent} is not writable "
                            f"({err.strerror})")


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path = check_not_shipped(Path(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise not_writable(path, err) from err
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; shipped files must be readable by all
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path: Path, data: Any, *, compact: bool = False) -> Path:
    """Atomic JSON file; a name ending in `.gz` is gzipped (no timestamp: same data, same bytes).
    `compact`: no indentation or spaces (a multi-megabyte payload that people do not read)."""
    def write(tmp: Path) -> None:
        text = (json.dumps(data, separators=(",", ":"), sort_keys=True) if compact else
                json.dumps(data, indent=2, sort_keys=True)) + "\n"
        if Path(path).suffix == ".gz":
            tmp.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))
        else:
            tmp.write_text(text)

    return _atomic(path, write)


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"missing file {path}")
    try:
        if path.suffix == ".gz":
            return json.loads(gzip.decompress(path.read_bytes()))
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err})") from err


def write_text(path: Path, text: str) -> Path:
    """Atomic text file (markdown tables, HTML)."""
    return _atomic(path, lambda tmp: tmp.write_text(text))


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> Path:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def read_tensors(
    path: Path, *, expected_shapes: dict[str, tuple[int, ...]] | None = None,
    what: str = "weights file",
) -> dict[str, torch.Tensor]:
    """Load a safetensors file; with `expected_shapes`, insist on exactly those keys and shapes.

    `what` names the kind of file in the error for a missing one (e.g. "baselines file").
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"missing {what} {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({err})") from err
    if expected_shapes is not None:
        missing = sorted(set(expected_shapes) - set(tensors))
        extra = sorted(set(tensors) - set(expected_shapes))
        if missing or extra:
            raise CorruptFileError(f"{path}: missing tensors {missing}, unexpected tensors {extra}")
        for name, shape in expected_shapes.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise CorruptFileError(
                    f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                    f"expected {list(shape)}"
                )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CorruptFileError(f"{path}: tensor {name!r} contains NaN/inf")
    return tensors


def replace_directory(build: Callable[[Path], None], target: Path) -> Path:
    """Build a directory in a temporary sibling, then swap it in, so a crash never leaves half."""
    target = check_not_shipped(Path(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    except OSError as err:
        raise not_writable(target, err) from err
    try:
        build(tmp)
        swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished folder `tmp` (a sibling of `target`) to `target`, replacing it.

    A failed rename is reported for `target` (the folder the user named), and the emptied
    holding folder of the old contents is removed again.
    """
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    if not target.exists():
        try:
            os.replace(tmp, target)
        except OSError as err:
            raise _swap_error(target, err) from err
        return
    parent = target.resolve().parent
    try:
        old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.old."))
    except OSError as err:
        raise _swap_error(target, err) from err
    try:
        os.replace(target, old / target.name)
    except OSError as err:
        old.rmdir()
        raise _swap_error(target, err) from err
    try:
        os.replace(tmp, target)
    except OSError as err:
        os.replace(old / target.name, target)  # put the earlier output back
        old.rmdir()
        raise _swap_error(target, err) from err
    shutil.rmtree(old)


def _swap_error(target: Path, err: OSError) -> OSError:
    if err.errno not in _NOT_WRITABLE:
        return err
    return NotWritableError(f"cannot replace {target}: {target} or its folder "
                            f"{target.resolve().parent} is not writable ({err.strerror})")
