"""One run at a time per output: an exclusive lock file next to the output path.

`output_lock(out, command=...)` takes `flock(LOCK_EX | LOCK_NB)` on `.<name>.rrm-lock` in the
folder of `out` before the work and holds it until the run ends. A second run writing the same
output is refused at once, with the process id, command and start time the holder wrote into the
lock file. The kernel drops a flock when its process dies, so a killed or crashed run leaves no
stale lock (at most the file, which the next run takes over); a run that ends removes the file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from rrm_plugin.errors import NotWritableError, OutputExistsError

LOCK_SUFFIX = ".rrm-lock"


class OutputInUseError(OutputExistsError):
    """Another run holds the lock of the same output."""


def lock_path(out: Path) -> Path:
    """The lock file of `out`; two spellings of one path (symlinks, `..`) share it."""
    resolved = Path(out).resolve()
    return resolved.parent / f".{resolved.name}{LOCK_SUFFIX}"


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"process {info['pid']}, `rrm {info['command']}` started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))}")
    except (OSError, ValueError, KeyError, TypeError):  # written a moment later, or not ours
        return "another process"


def _acquire(path: Path, *, out: Path, command: str) -> int:
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise NotWritableError(f"--out {out}: cannot create its lock file {path} "
                                   f"({err.strerror})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputInUseError(
                f"--out {out} is being written by another run ({holder}; lock file {path}); "
                "wait for it to finish or give another --out") from None
        # The previous holder removes the file when it ends: a lock on a removed file is
        # nobody's lock, so take the one at `path` again.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (opened.st_ino,
                                                                         opened.st_dev):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command,
                              "started": time.time()}).encode(), 0)
    return fd


def _missing_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


@contextmanager
def output_lock(out: Path, *, command: str) -> Iterator[Path]:
    """Hold the lock of `out` inside the block (raises `OutputInUseError` if another run has it).

    Folders created for the lock file are removed again at the end if nothing else went there.
    """
    path = lock_path(out)
    created = _missing_parents(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NotWritableError(f"--out {out}: cannot create its folder {path.parent} "
                               f"({err.strerror})") from err
    try:
        fd = _acquire(path, out=Path(out), command=command)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield path
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: the next run makes a fresh file
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote there) or already gone
            return
