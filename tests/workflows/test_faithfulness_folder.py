"""`faithfulness_to_folder`: what `rrm faithfulness` writes, from a notebook; a resumed run equals
a fresh one; bad options are refused before the model loads."""

import json

import pytest

import rrm_plugin
from rrm_plugin.cli.main import main
from rrm_plugin.errors import OutputExistsError, RRMUserError
from rrm_plugin.workflows import faithfulness_folder
from rrm_plugin.workflows.faithfulness_folder import FaithfulnessOptions, faithfulness_to_folder
from tests.workflows.conftest import assert_same_outputs

ARGV = ["--methods", "rrm", "random", "--n-images", "2", "--batch-size", "2"]


def options(image_folder):
    return rrm_plugin.FaithfulnessOptions(images=[str(image_folder)], methods=["rrm", "random"],
                                          n_images=2, batch_size=2)


def test_library_call_writes_exactly_what_the_command_writes(image_folder, tmp_path, capsys):
    done = rrm_plugin.faithfulness_to_folder(tmp_path / "lib", options=options(image_folder),
                                             chunks=tmp_path / "lib_chunks", progress=False)
    argv = ["faithfulness", "--images", str(image_folder), *ARGV, "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    files = assert_same_outputs(tmp_path / "lib", tmp_path / "cli")
    assert set(files) >= {"faithfulness.json", "faithfulness.png", "faithfulness.md"}
    written = json.loads((tmp_path / "lib" / "faithfulness.json").read_text())
    assert written.pop("metadata")["baselines"] == done.baselines
    assert written == json.loads(json.dumps(done.result.to_json_dict()))  # tuples: lists
    assert (tmp_path / "lib" / "faithfulness.md").read_text() == done.table + "\n"
    assert done.table in printed and done.predicted_labels and done.n_labels == 8
    assert done.is_main and done.counts.computed > 0 and done.counts.reused == 0
    assert not (tmp_path / "lib_chunks").exists()  # removed after success (no keep_chunks)


def test_resumed_run_equals_the_fresh_run(image_folder, tmp_path):
    chunks = tmp_path / "chunks"
    fresh = faithfulness_to_folder(tmp_path / "fresh", options=options(image_folder),
                                   chunks=chunks, keep_chunks=True, progress=False)
    files = sorted(chunks.iterdir())
    assert len(files) == fresh.counts.computed >= 3
    for path in files[::2]:  # as if killed before these chunks were written
        path.unlink()
    resumed = faithfulness_to_folder(tmp_path / "resumed", options=options(image_folder),
                                     chunks=chunks, keep_chunks=True, progress=False)
    removed = len(files[::2])
    assert (resumed.counts.computed, resumed.counts.reused) == (removed, len(files) - removed)
    assert_same_outputs(tmp_path / "fresh", tmp_path / "resumed")
    again = faithfulness_to_folder(tmp_path / "again", options=options(image_folder),
                                   chunks=chunks, progress=False)
    assert (again.counts.computed, again.counts.reused) == (0, len(files))
    assert_same_outputs(tmp_path / "fresh", tmp_path / "again")
    assert not chunks.exists()


@pytest.mark.parametrize("bad, error", [
    ({"methods": ["rrm", "bogus"]}, "bogus"),
    ({"criterion": "largest"}, "largest"),
    ({"skip_early_layers": -1}, "skip_early_layers"),
    ({"images": "photo.png"}, "a list of files"),
])
def test_bad_options_are_refused_before_the_model_loads(bad, error, tmp_path, monkeypatch):
    def no_loading(**_):
        raise AssertionError("loaded the model before checking the options")

    monkeypatch.setattr(faithfulness_folder, "load_workspace", no_loading)
    with pytest.raises(RRMUserError, match=error):
        faithfulness_to_folder(tmp_path / "out", options=FaithfulnessOptions(**bad))
    if "images" in bad:  # every workflow's options alike (`DatasetInputs`)
        with pytest.raises(RRMUserError, match=error):
            rrm_plugin.FeaturesOptions(**bad)
    assert not (tmp_path / "out").exists()


def test_someone_elses_folder_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(faithfulness_folder, "load_workspace", lambda **_: 1 / 0)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite=True|--overwrite"):
        faithfulness_to_folder(tmp_path / "out")
    with pytest.raises(RRMUserError, match="inside --out"):
        faithfulness_to_folder(tmp_path / "new", chunks=tmp_path / "new" / "chunks")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
