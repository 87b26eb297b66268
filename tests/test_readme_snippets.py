"""Every ```python block of README.md and docs/**/*.md runs standalone.

Each block runs alone in a fresh interpreter (a subprocess), offline (`HF_HUB_OFFLINE=1`), in an
empty temporary working folder (files a block writes land there) that holds `photo.jpg`, a
random picture standing in for the reader's photo. Words after `python` in the fence name what a
block needs:

- `hub`: the Hugging Face cache of `tests/hubcache.py` (a random full-size ViT-B/16 and the
  paper-size SAEs), as a reader's cache after the first download;
- `slow`: the block takes over a minute on 2 busy cores (marked `slow`, like `hub`);
- `no-test`: the block is not run (listed by `test_snippets_not_run_are_few`); the README's real-ViT
  quick start is one: `tests/workflows/test_quickstart.py` runs its lines verbatim.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARKERS = {"hub", "slow", "no-test"}
TIME_LIMIT_S = 600
SLOW = {"hub", "slow"}  # hub: building the full-size ViT-B/16 cache and model


class Snippet(NamedTuple):
    file: str
    line: int
    markers: frozenset[str]
    code: str

    @property
    def name(self) -> str:
        return f"{self.file}:{self.line}"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def snippets() -> list[Snippet]:
    found = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Snippet(path.relative_to(ROOT).as_posix(), line,
                                 frozenset(match.group(1).split()), match.group(2)))
    return found


ALL = snippets()
RUN = [s for s in ALL if "no-test" not in s.markers]


def params():
    for s in RUN:
        marks = [pytest.mark.slow] if s.markers & SLOW else []
        yield pytest.param(s, id=s.name, marks=marks)


def test_snippets_are_found_and_their_markers_known():
    assert len(ALL) >= 6, [s.name for s in ALL]  # README: API, token graphs, hub, circuits, ...
    unknown = {s.name: sorted(s.markers - MARKERS) for s in ALL if s.markers - MARKERS}
    assert not unknown, f"unknown fence markers {unknown}; known: {sorted(MARKERS)}"


def test_snippets_not_run_are_few():
    skipped = [s.name for s in ALL if "no-test" in s.markers]
    print(f"{len(skipped)} python block(s) not run: {skipped}")
    assert len(skipped) <= 1, skipped


def write_photo(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "photo.jpg")


@pytest.mark.parametrize("snippet", params())
def test_snippet_runs_standalone(snippet: Snippet, tmp_path, request):
    work = tmp_path / "work"
    work.mkdir()
    write_photo(work)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path / "home"), "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "2", "TORCH_HOME": str(tmp_path / "torch"),
           "RRM_PLUGIN_CACHE": str(tmp_path / "rrm_cache"),
           "HF_HOME": str(tmp_path / "hf_home")}
    if "hub" in snippet.markers:
        cache, _, _ = request.getfixturevalue("vit_b16_hub")
        env["HF_HUB_CACHE"] = str(cache)
    script = work / "snippet.py"
    script.write_text(snippet.code, encoding="utf-8")
    before = repository_files()
    done = subprocess.run([sys.executable, script.name], cwd=work, env=env, capture_output=True,
                          text=True, timeout=TIME_LIMIT_S)
    assert done.returncode == 0, f"{snippet.name} failed:\n{done.stderr[-4000:]}"
    after = repository_files()
    outside = sorted(name for name in before.keys() | after.keys()
                     if before.get(name) != after.get(name))
    assert not outside, f"{snippet.name} wrote {outside} into the repository"


# Not the snippets' business, and written by tests running beside this one (e.g. on another
# pytest-xdist worker): bytecode caches, the environment, git's own files.
UNWATCHED = {"__pycache__", ".git", ".venv", ".pytest_cache", ".ruff_cache", ".import_linter_cache"}


def repository_files() -> dict[str, int]:
    """Every file of the repository (outside `UNWATCHED`) with its modification time."""
    found = {}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in UNWATCHED]
        for name in files:
            path = Path(folder, name)
            found[path.relative_to(ROOT).as_posix()] = path.stat().st_mtime_ns
    return found
