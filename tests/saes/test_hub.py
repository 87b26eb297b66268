"""Reading checkpoints from the hub cache: what is asked of `huggingface_hub`, and the errors."""

import io
import re
import zipfile

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from rrm_plugin.io import CorruptFileError
from rrm_plugin.saes.hub import (
    CheckpointNotFoundError,
    check_state,
    find_files,
    hub_snapshot,
    read_torch_checkpoint,
)
from tests.hubcache import torch_bytes


def test_snapshot_asks_only_for_the_patterns_and_passes_force_download(monkeypatch, tmp_path):
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert hub_snapshot("org/r", ["a/*.pth"]) == tmp_path
    assert hub_snapshot("org/r", ["b.json"], force_download=True) == tmp_path
    assert calls == [("org/r", {"allow_patterns": ["a/*.pth"], "force_download": False}),
                     ("org/r", {"allow_patterns": ["b.json"], "force_download": True})]


@pytest.mark.parametrize("offline", [True, False])
def test_snapshot_failure_says_what_and_how_to_fix(monkeypatch, offline):
    def snapshot_download(repo_id, **kwargs):
        raise OSError("boom")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/the/cache")
    message = ("could not get ['x.pt'] of Hugging Face repo 'org/r'"
               + (" (HF_HUB_OFFLINE is set)" if offline else "")
               + ": not in the local cache /the/cache and not downloadable (OSError: boom). "
               "Download it once with `hf download org/r` on a machine with access, or point "
               "HF_HUB_CACHE at a cache that has it.")
    with pytest.raises(CheckpointNotFoundError, match=f"^{re.escape(message)}$") as info:
        hub_snapshot("org/r", ["x.pt"])
    assert isinstance(info.value.__cause__, OSError)


def test_find_files_matches_relative_paths_files_only_sorted(tmp_path):
    for name in ("m/K1_R1.0/L0/epoch9.pth", "K1_R1.0/L0/epoch50.pth", "K1_R1.0/L0/epoch1.pth",
                 "K1_R1.0/L0/notes.txt", "K1_R1.0/L00/epoch5.pth"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "K1_R1.0/L0/epoch7.pth").mkdir()  # a folder, not a checkpoint
    patterns = ["K1_R1.0/L0/epoch*.pth", "*/K1_R1.0/L0/epoch*.pth"]
    assert find_files(tmp_path, patterns) == [
        tmp_path / "K1_R1.0/L0/epoch1.pth", tmp_path / "K1_R1.0/L0/epoch50.pth",
        tmp_path / "m/K1_R1.0/L0/epoch9.pth"]
    assert find_files(tmp_path, ["nothing*"]) == []


def test_checkpoint_that_is_not_a_dict_is_named(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(torch_bytes(torch.zeros(2)))
    with pytest.raises(CorruptFileError, match=f"^{re.escape(str(path))} holds a Tensor, "
                                               "expected a dict$"):
        read_torch_checkpoint(path)
    path.write_bytes(torch_bytes({"a": torch.ones(2)}))
    assert read_torch_checkpoint(path)["a"].tolist() == [1.0, 1.0]


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(torch_bytes({"a": torch.ones(1000)})[:200])
    with pytest.raises(CorruptFileError, match=f"^{re.escape(str(path))} is not a readable "
                                               "torch checkpoint"):
        read_torch_checkpoint(path)


def test_check_state_names_what_is_wrong_and_returns_float32():
    expected = {"W": (2, 3), "b": (3,)}
    good = {"W": torch.ones(2, 3, dtype=torch.float64), "b": torch.zeros(3), "extra": 1}
    out = check_state(good, expected, where="f")
    assert list(out) == ["W", "b"] and out["W"].dtype == torch.float32
    assert torch.equal(out["W"], torch.ones(2, 3))
    with pytest.raises(CorruptFileError,
                       match=re.escape("f: missing tensors ['W', 'b'] (found ['x'])")):
        check_state({"x": torch.ones(1)}, expected, where="f")
    with pytest.raises(CorruptFileError, match=re.escape("f: 'b' is a list, not a tensor")):
        check_state({**good, "b": [0.0, 0.0, 0.0]}, expected, where="f")
    with pytest.raises(CorruptFileError,
                       match=re.escape("f: tensor 'b' has shape [1, 3], expected [3]")):
        check_state({**good, "b": torch.zeros(1, 3)}, expected, where="f")
    with pytest.raises(CorruptFileError, match=re.escape("f: tensor 'W' contains NaN/inf")):
        check_state({**good, "W": torch.full((2, 3), float("inf"))}, expected, where="f")


def _saved_on_cuda(obj) -> bytes:
    """`torch.save` bytes whose storages are tagged `cuda:0`, as a checkpoint saved on a GPU."""
    src = zipfile.ZipFile(io.BytesIO(torch_bytes(obj)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):  # the pickled location string "cpu"
                assert data.count(b"X\x03\x00\x00\x00cpu") == 1
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(info.filename, data)
    return out.getvalue()


def test_checkpoint_saved_on_a_gpu_loads_onto_the_cpu(tmp_path):
    path = tmp_path / "gpu.pt"
    path.write_bytes(_saved_on_cuda({"W": torch.arange(3.0)}))
    data = read_torch_checkpoint(path)
    assert data["W"].device.type == "cpu" and data["W"].tolist() == [0.0, 1.0, 2.0]


class Payload:  # any Python object a pickle could smuggle in
    pass


def test_unpickling_is_refused_even_where_torch_allows_it_by_default(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    path.write_bytes(torch_bytes({"W": torch.ones(1), "extra": Payload()}))
    # This variable turns torch.load's own default to weights_only=False.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    message = (f"{path} needs arbitrary unpickling (it stores Python objects, not only tensors); "
               "refusing to load it. Save the state dict (tensors only) instead.")
    with pytest.raises(CorruptFileError, match=f"^{re.escape(message)}$"):
        read_torch_checkpoint(path)
