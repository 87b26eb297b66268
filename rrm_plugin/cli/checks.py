"""Cheap checks of command-line options, run right after parsing, before any heavy import.

Each command's `check_args(args)` uses these and returns the outputs the run will write (which
`rrm` then locks). They use only the standard library, so a bad path or option is answered in
well under a second, before a model is loaded or a file is written. A failed check raises one of
the exceptions `rrm` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path

from rrm_plugin.errors import (
    MissingFileError,
    NotAFileError,
    NotAFolderError,
    RRMUserError,
)

# torch.device strings rrm can use: the CPU, a CUDA GPU (optionally by index) or Apple's MPS.
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")


def out_path(value: str) -> Path:
    """argparse `type=` of `--out`: a path, not the empty string (which would mean the cwd)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty path; give a new folder or file name")
    return Path(value)


def check_device(value: str) -> None:
    if not DEVICE_PATTERN.fullmatch(value):
        raise RRMUserError(f"--device {value!r}: expected cpu, cuda, cuda:N (a GPU index) or mps")


def at_least(option: str, value, minimum: int | float = 1) -> None:
    """`value` (None: not given) must be >= `minimum`; for lists, every element."""
    for v in value if isinstance(value, list | tuple) else [value]:
        if v is not None and v < minimum:
            raise RRMUserError(f"{option} must be at least {minimum}, got {v}")


def in_range(option: str, value: float, *, low: float, high: float,
             low_open: bool = False) -> None:
    """`low <= value <= high` (`low < value` with `low_open`)."""
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise RRMUserError(f"{option} must be in {interval}, got {value}")


def existing_file(option: str, path: Path | str | None, *, what: str) -> None:
    if path is None:
        return
    path, named = Path(path), f"{option} {path}".strip()
    if path.is_dir():
        raise NotAFileError(f"{named} is a folder; expected a {what}")
    if not path.is_file():
        raise MissingFileError(f"{named}: no such {what}")


def existing_folder(option: str, path: Path | str | None, *, what: str) -> None:
    if path is None:
        return
    path, named = Path(path), f"{option} {path}".strip()
    if path.is_file():
        raise NotAFolderError(f"{named} is a file; expected a {what}")
    if not path.is_dir():
        raise MissingFileError(f"{named}: no such {what}")


def image_paths(option: str | None, paths: Sequence[str] | None) -> None:
    """Every image path exists (a file, or a folder of images / class folders)."""
    for path in paths or ():
        if not Path(path).exists():
            where = f"{option}: " if option else ""
            raise MissingFileError(f"{where}no image file or folder {path}")


def _path_like(value: str) -> bool:
    return "/" in value or os.sep in value or value.startswith(".") or Path(value).exists()


def model_arg(option: str, value: str | None) -> None:
    """A model name (checked when loaded) or a folder saved by rrm (checked here)."""
    if value is None or not _path_like(value):
        return
    existing_folder(option, value, what="model folder (config.json + model.safetensors) or "
                                        "model name")
    if not (Path(value) / "config.json").is_file():
        raise MissingFileError(f"{option} {value} has no config.json; expected a folder written "
                               "by `rrm train-model` or save_model")


def release_arg(value: str | None) -> None:
    """A release name (checked when loaded), 'none', or a folder written by `rrm train-saes`."""
    if value is None or value.lower() == "none" or not _path_like(value):
        return
    existing_folder("--release", value, what="SAE release folder or release name")


def model_args(args: argparse.Namespace) -> None:
    """`--model`, `--release` and `--device` of `add_model_args`."""
    model_arg("--model", args.model)
    release = getattr(args, "release", None)
    release_arg(release)
    if args.model is None and release is not None and Path(release).is_dir():
        raise RRMUserError(f"--release {release} is a folder of your own SAEs: give --model too")
    check_device(args.device)


def chunks_arg(args: argparse.Namespace, out: Path | None) -> None:
    """`--chunks` (dataset commands): a folder or new, and not inside `--out` (replaced)."""
    from rrm_plugin.runs.output import check_chunk_folder  # no torch: the checks stay fast

    check_chunk_folder(getattr(args, "chunks", None), out)


def inputs_of(args: argparse.Namespace, *names: str) -> list[str]:
    """The existing paths among these options' values (for the `--out` containment check)."""
    found = []
    for name in names:
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and Path(v).exists():
                found.append(str(v))
    return found
