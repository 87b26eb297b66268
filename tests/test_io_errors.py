"""Errors of writes into unwritable folders name the path the user gave, never the temporary
sibling; a missing file is named by its kind (weights, baselines, data)."""

import errno
import os

import pytest

import rrm_plugin.io as io
from rrm_plugin.io import read_tensors, swap_into_place, write_json


def denied(path):
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def test_an_unwritable_folder_is_named_not_the_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "sae_eval.json"

    def refuse(*, dir, prefix, suffix):
        raise denied(f"{dir}/{prefix}abc{suffix}")

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as caught:
        write_json(target, {})
    assert str(caught.value) == (f"cannot write {target}: its folder {tmp_path} is not writable "
                                 "(Permission denied)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_for_real(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(PermissionError, match=rf"^cannot write {ro}/x\.json: its folder {ro} "):
        write_json(ro / "x.json", {})


def test_a_failed_swap_names_the_output_and_leaves_no_holding_folder(tmp_path, monkeypatch):
    target, tmp = tmp_path / "out", tmp_path / ".out.partial.1"
    target.mkdir()
    (target / "earlier.json").write_text("1")
    tmp.mkdir()
    real = os.replace

    def refuse_first(src, dst):
        if src == target:  # moving the earlier output aside
            raise denied(dst)
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", refuse_first)
    with pytest.raises(PermissionError) as caught:
        swap_into_place(tmp, target)
    assert str(caught.value) == (f"cannot replace {target}: {target} or its folder {tmp_path} "
                                 "is not writable (Permission denied)")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial.1", "out"]  # no .old
    assert (target / "earlier.json").read_text() == "1"


def test_missing_files_are_named_by_their_kind(tmp_path):
    from rrm_plugin.attribution.baselines import Baselines
    from rrm_plugin.workflows.debias import load_data_file

    missing = tmp_path / "gone.safetensors"
    with pytest.raises(FileNotFoundError, match=rf"^missing weights file {missing}$"):
        read_tensors(missing)
    with pytest.raises(FileNotFoundError, match=rf"^missing baselines file {missing}$"):
        Baselines.load(missing)
    with pytest.raises(FileNotFoundError, match=rf"^missing data file {missing}$"):
        load_data_file(missing)
