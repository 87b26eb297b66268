"""`lens_to_folder`: what `rrm lens` writes, from a notebook."""

import json

import pytest

import rrm_plugin
from rrm_plugin.cli.main import main
from rrm_plugin.errors import RRMUserError
from tests.workflows.conftest import assert_same_outputs

SMALL = {"n_images": 4, "release": "none", "permutations": 5, "random_repeats": 1,
         "random_shared_seeds": 2, "n_probe_images": 8, "batch_size": 4}


@pytest.mark.slow  # end to end twice (library and command), tens of seconds
def test_library_call_writes_exactly_what_the_command_writes(image_folder, tmp_path, capsys):
    options = rrm_plugin.LensOptions(images=[str(image_folder)], **SMALL)
    done = rrm_plugin.lens_to_folder(tmp_path / "lib", options=options, progress=False)
    argv = ["lens", "--images", str(image_folder), "--no-progress", "--out", str(tmp_path / "cli")]
    for name, value in SMALL.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    assert main(argv) == 0
    files = assert_same_outputs(tmp_path / "lib", tmp_path / "cli")
    assert sorted(str(p.relative_to(tmp_path / "lib")) for p in done.files) == sorted(
        f for f in files if f != "rrm-output.json")
    assert done.predicted_labels  # unlabelled images
    written = json.loads((tmp_path / "lib" / "lens.json").read_text())
    assert written == json.loads(json.dumps(done.results.summary))


def test_too_many_images_is_a_user_error(image_folder, tmp_path):
    with pytest.raises(RRMUserError, match=r"--n-images must be in \[1, 8\]"):
        rrm_plugin.lens_to_folder(tmp_path / "out", options=rrm_plugin.LensOptions(
            images=[str(image_folder)], **{**SMALL, "n_images": 9}))
    assert not (tmp_path / "out").exists()
