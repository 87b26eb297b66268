"""Output folders are written as a unit (issue 15 section 3)."""

import json

import pytest

from rrm_plugin.runs.output import MANIFEST, check_output_directory, output_directory


def test_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with output_directory(out, command="trace") as tmp:
        (tmp / "a.json").write_text("{}")
        assert not out.exists()  # nothing visible until the end
    assert sorted(p.name for p in out.iterdir()) == ["a.json", MANIFEST]
    assert json.loads((out / MANIFEST).read_text()) == {"command": "trace", "files": ["a.json"]}


def test_interrupted_run_leaves_the_earlier_output_untouched(tmp_path):
    out = tmp_path / "out"
    with output_directory(out, command="trace") as tmp:
        (tmp / "image0.json").write_text("0")
    with pytest.raises(KeyboardInterrupt), output_directory(out, command="trace") as tmp:
        (tmp / "circuit.png").write_text("37")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["image0.json", MANIFEST]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
    with output_directory(out, command="trace") as tmp:  # an earlier trace output: replaced
        (tmp / "image37.json").write_text("37")
    assert sorted(p.name for p in out.iterdir()) == ["image37.json", MANIFEST]


def test_foreign_folders_are_refused_unless_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="non-empty folder .*no rrm output manifest"):
        check_output_directory(out, command="trace")
    with output_directory(tmp_path / "lens", command="lens") as tmp:
        (tmp / "x").write_text("")
    with pytest.raises(FileExistsError, match=r"output of `rrm lens`"):
        check_output_directory(tmp_path / "lens", command="trace")
    check_output_directory(tmp_path / "empty", command="trace")
    (tmp_path / "empty").mkdir()
    check_output_directory(tmp_path / "empty", command="trace")
    with output_directory(out, command="trace", overwrite=True) as tmp:
        (tmp / "y").write_text("")
    assert not (out / "thesis.tex").exists()


def test_unwritable_parent_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    import rrm_plugin.runs.output as output

    # This machine runs tests as root, which can write anywhere: the permission answer is faked.
    monkeypatch.setattr(output.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="not writable"):
        check_output_directory(tmp_path / "out", command="trace")
    import rrm_plugin.workflows.trace_folder as trace_folder
    from tests.cli.conftest import expect_user_error

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(trace_folder, "load_workspace", no_work)
    expect_user_error(capsys, ["trace", "0", "--out", str(tmp_path / "t")], "not writable")
