import os
import stat

import pytest
import torch

from rrm_plugin.io import (
    CorruptFileError,
    read_tensors,
    replace_directory,
    write_json,
    write_tensors,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "w.safetensors"
    write_tensors(path, {"a": torch.ones(3)})
    with pytest.raises(AttributeError):
        write_tensors(path, {"a": "not a tensor"})
    assert torch.equal(read_tensors(path)["a"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_failed_directory_build_keeps_the_old_directory(tmp_path):
    target = tmp_path / "release"
    replace_directory(lambda d: write_json(d / "x.json", {"v": 1}), target)

    def broken(d):
        write_json(d / "x.json", {"v": 2})
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        replace_directory(broken, target)
    assert (target / "x.json").read_text().strip().endswith("}")
    assert '"v": 1' in (target / "x.json").read_text()
    assert sorted(os.listdir(tmp_path)) == ["release"]


def test_tensors_with_nan_are_rejected(tmp_path):
    write_tensors(tmp_path / "n.safetensors", {"w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(CorruptFileError, match="'w' contains NaN/inf"):
        read_tensors(tmp_path / "n.safetensors")
