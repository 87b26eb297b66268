import json
from pathlib import Path

import pytest

from tests.attribution.conftest import (  # noqa: F401  (fixtures shared with attribution tests)
    baselines,
    images,
    mean_baselines,
    reference_images,
    saes,
    vit,
)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """8 seeded random unlabelled images of the digits model's size (as `tests/runs`)."""
    from tests.runs.driver import write_images

    return write_images(tmp_path_factory.mktemp("workflow_images") / "images")


def read_output(path: Path):
    """A file's content for comparison: JSON parsed, safetensors as tensors + metadata, else
    bytes."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return path.read_bytes()


def assert_same_outputs(a: Path, b: Path) -> list[str]:
    """`a` and `b` (files or folders) hold the same files with equal content, tensors bit for
    bit; returns the relative names compared."""
    import torch

    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()) if a.is_dir() \
        else [""]
    assert files == (sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
                     if b.is_dir() else [""])
    for name in files:
        x, y = read_output(a / name if name else a), read_output(b / name if name else b)
        if isinstance(x, tuple):
            assert x[0] == y[0] and x[1].keys() == y[1].keys(), name
            assert all(torch.equal(x[1][k], y[1][k]) for k in x[1]), name
        else:
            assert x == y, name
    return files
