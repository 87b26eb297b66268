"""`features_to_folder`: what `rrm features` writes, from a notebook; layer selection."""

import json

import pytest

import rrm_plugin
from rrm_plugin.cli.main import main
from rrm_plugin.errors import RRMUserError
from rrm_plugin.workflows.features_folder import select_layers
from tests.workflows.conftest import assert_same_outputs


@pytest.mark.slow  # end to end twice (library and command), tens of seconds
def test_library_call_writes_exactly_what_the_command_writes(image_folder, tmp_path, capsys):
    options = rrm_plugin.FeaturesOptions(images=[str(image_folder)], k=3, n_circuit_images=2,
                                         layers=[1, 2], batch_size=4)
    done = rrm_plugin.features_to_folder(tmp_path / "lib", options=options, progress=False)
    argv = ["features", "--images", str(image_folder), "--k", "3", "--n-circuit-images", "2",
            "--layers", "1", "2", "--batch-size", "4", "--no-progress",
            "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    files = assert_same_outputs(tmp_path / "lib", tmp_path / "cli")
    assert {"features.json", "cards.json"} <= set(files)
    assert sorted(str(p.relative_to(tmp_path / "lib")) for p in done.files) == sorted(
        f for f in files if f != "rrm-output.json")
    assert done.types is None and done.baselines == "shipped with rrm-digits-vit"
    hooks = list(rrm_plugin.load_saes("rrm-digits-vit"))
    assert done.dashboards.hook_names == hooks[1:3]
    assert json.loads((tmp_path / "lib" / "features.json").read_text())  # a real document


def test_select_layers_keeps_consecutive_positions_and_refuses_others():
    saes = {"a": 0, "b": 1, "c": 2}
    assert select_layers(saes, None) == saes
    assert select_layers(saes, [2, 1, 2]) == {"b": 1, "c": 2}
    with pytest.raises(RRMUserError, match="out of range"):
        select_layers(saes, [3])
    with pytest.raises(RRMUserError, match="consecutive"):
        select_layers(saes, [0, 2])


def test_no_release_is_refused_before_anything_loads():
    with pytest.raises(RRMUserError, match="needs an SAE release"):
        rrm_plugin.FeaturesOptions(release="none")
