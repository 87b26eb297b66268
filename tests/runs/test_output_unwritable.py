"""An output folder that cannot be written is reported for the folder the user gave."""

import errno
import os

import pytest

import rrm_plugin.runs.output as output
from rrm_plugin.runs.output import check_output_directory, output_directory


def test_failed_temporary_folder_names_the_users_folder(tmp_path, monkeypatch):
    out = tmp_path / "results" / "t"

    def refuse(*, dir, prefix):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), f"{dir}/{prefix}x1")

    monkeypatch.setattr(output.tempfile, "mkdtemp", refuse)
    with pytest.raises(PermissionError) as caught, output_directory(out, command="trace"):
        raise AssertionError("the block must not run")
    assert str(caught.value) == (f"--out {out}: cannot create files in {tmp_path / 'results'} "
                                 "(Permission denied)")


def test_an_existing_out_that_cannot_be_moved_is_refused_before_the_work(tmp_path, monkeypatch):
    out = tmp_path / "t"
    with output_directory(out, command="trace") as tmp:
        (tmp / "a.json").write_text("{}")
    real = os.access
    monkeypatch.setattr(output.os, "access", lambda path, mode: path != out and real(path, mode))
    with pytest.raises(PermissionError, match=rf"^--out {out} is not writable, so it cannot be "
                                              r"replaced$"):
        check_output_directory(out, command="trace")
