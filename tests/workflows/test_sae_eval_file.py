"""`evaluate_saes_to_file`: what `rrm eval-saes` writes, from a notebook."""

import json

import pytest

import rrm_plugin
from rrm_plugin.cli.main import main
from rrm_plugin.errors import NotAFileError
from rrm_plugin.workflows import sae_eval_file
from tests.workflows.conftest import assert_same_outputs


def test_library_call_writes_exactly_what_the_command_writes(image_folder, tmp_path, capsys):
    options = rrm_plugin.SAEEvalOptions(images=[str(image_folder)], batch_size=4)
    done = rrm_plugin.evaluate_saes_to_file(tmp_path / "lib.json", options=options,
                                            progress=False)
    argv = ["eval-saes", "--images", str(image_folder), "--batch-size", "4",
            "--out", str(tmp_path / "cli.json")]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert_same_outputs(tmp_path / "lib.json", tmp_path / "cli.json")
    written = json.loads((tmp_path / "lib.json").read_text())
    assert written == {"model": "digits-vit", "release": "rrm-digits-vit", "n_images": 8,
                       "metrics": json.loads(json.dumps(done.metrics))}
    assert done.predicted_labels
    # rrm-digits-vit documents no explained variance: a known warning, printed by the command
    assert any("normalisation check skipped" in line for line in done.warnings)
    warned = [line for line in printed.err.splitlines() if line.startswith("warning: ")]
    assert warned == [f"warning: {line}" for line in done.warnings]
    assert set(done.metrics) > {h for h in done.metrics if h.startswith("blocks.")} != set()


def test_a_folder_as_output_file_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(sae_eval_file, "load_workspace", lambda **_: 1 / 0)
    with pytest.raises(NotAFileError, match="folder"):
        rrm_plugin.evaluate_saes_to_file(tmp_path)
