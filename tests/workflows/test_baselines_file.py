"""`baselines_to_file`: what `rrm baselines` writes, from a notebook; the file is the one
`compute_baselines` gives (the independent path) and `resolve_baselines` reads back."""

import pytest
import torch

import rrm_plugin
from rrm_plugin.attribution.baselines import Baselines, compute_baselines
from rrm_plugin.cli.main import main
from rrm_plugin.errors import RRMUserError
from rrm_plugin.workflows import baselines_file
from rrm_plugin.workflows.inputs import dataset_images
from rrm_plugin.workflows.workspace import load_workspace
from tests.workflows.conftest import assert_same_outputs


def test_library_call_writes_exactly_what_the_command_writes(image_folder, tmp_path):
    options = rrm_plugin.BaselinesOptions(images=[str(image_folder)], statistic="mean",
                                          batch_size=3)
    done = rrm_plugin.baselines_to_file(tmp_path / "lib.safetensors", options=options,
                                        progress=False)
    argv = ["baselines", "--images", str(image_folder), "--statistic", "mean",
            "--batch-size", "3", "--out", str(tmp_path / "cli.safetensors")]
    assert main(argv) == 0
    assert_same_outputs(tmp_path / "lib.safetensors", tmp_path / "cli.safetensors")
    assert done.path == tmp_path / "lib.safetensors" and done.over == "8 images"
    ws = load_workspace(model=None, release="rrm-digits-vit")
    images = dataset_images([str(image_folder)], ws.model).images
    direct = compute_baselines(ws.model, ws.saes, images, statistic="mean", progress=False)
    loaded = Baselines.load(done.path)
    assert loaded.statistic == "mean" and loaded.n_images == 8
    for kind in ("features", "errors", "resid"):
        for hook in ws.saes:
            assert torch.equal(getattr(loaded, kind)[hook], getattr(direct, kind)[hook])


@pytest.mark.parametrize("bad", [{"release": "none"}, {"statistic": "mode"}])
def test_bad_options_are_refused_before_the_model_loads(bad, tmp_path, monkeypatch):
    monkeypatch.setattr(baselines_file, "load_workspace", lambda **_: 1 / 0)
    with pytest.raises(RRMUserError):
        rrm_plugin.baselines_to_file(tmp_path / "b.safetensors",
                                     options=rrm_plugin.BaselinesOptions(**bad))
