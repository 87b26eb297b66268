"""`rrm features` on the embedded default: a subset of layers and images, numbered as released."""

import json

import pytest

from rrm_plugin.cli.main import main
from tests.cli.conftest import expect_user_error


def test_features_command_on_two_layers(tmp_path):
    out = tmp_path / "features"
    assert main(["features", "--out", str(out), "--layers", "1", "2", "--k", "2",
                 "--n-circuit-images", "4", "--no-progress"]) == 0
    cards = json.loads((out / "cards.json").read_text())["cards"]
    assert len(cards) == 512 and {c.split(":")[0] for c in cards} == {"1", "2"}
    records = json.loads((out / "features.json").read_text())
    assert records["n_images"] == 359 and records["n_circuit_graphs"] == 4
    assert [layer["layer"] for layer in records["layers"]] == [1, 2]
    # Upstream features of layer 2 live in layer 1.
    assert all(u["layer"] == 1 for ups in records["layers"][1]["circuits"]["upstream"]
               for u in ups)
    assert (out / "contact_sheet_layer2.png").is_file()
    assert not (out / "contact_sheet_layer0.png").exists()


@pytest.mark.parametrize(("argv", "match"), [
    (["--layers", "5"], r"--layers \[5\] out of range: the release has layers 0..2"),
    (["--layers", "0", "2"], "must be consecutive"),
    (["--k", "0"], "--k must be at least 1"),
])
def test_features_command_bad_input(tmp_path, capsys, argv, match):
    expect_user_error(capsys, ["features", "--out", str(tmp_path / "f"), "--no-progress", *argv],
                      match)


def test_features_command_with_types(tmp_path):
    out = tmp_path / "typed"
    assert main(["features", "--out", str(out), "--layers", "2", "--k", "2",
                 "--n-circuit-images", "0", "--types", "--no-progress"]) == 0
    types = json.loads((out / "types.json").read_text())
    cards = json.loads((out / "cards.json").read_text())["cards"]
    layer = types["layers"][0]
    assert layer["hook_name"] == "blocks.2.hook_resid_post"
    assert [cards[f"2:{f}"]["type"] for f in range(256)] == layer["types"]
    assert abs(sum(layer["shares"].values()) - 1) < 1e-9
    assert "circuits" not in json.loads((out / "features.json").read_text())["layers"][0]
    for name in ("types_table.md", "type_shares.png", "tuning_examples.png",
                 "types_sensitivity.md", "types_sensitivity.png", "types_sensitivity.json"):
        assert (out / name).is_file()
    # The sensitivity's rows at the default thresholds (one per threshold) re-type to the shares.
    rows = json.loads((out / "types_sensitivity.json").read_text())["layers"][0]["rows"]
    default = [r for r in rows if r["default"]]
    assert len(default) == 4 and all(r["shares"] == pytest.approx(layer["shares"], abs=1e-12)
                                     for r in default)
