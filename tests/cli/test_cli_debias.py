"""`rrm debias` on the shipped digits-spurious benchmark (small settings) and on a --data file."""

import json

import pytest
import torch

from rrm_plugin.cli.main import main
from rrm_plugin.io import write_tensors
from tests.cli.conftest import expect_user_error

SMALL = ["--seeds", "1", "--pool", "400", "--counts", "2", "--random-draws", "1"]


@pytest.mark.slow
def test_debias_on_the_embedded_benchmark(tmp_path, capsys):
    out = tmp_path / "debias"
    assert main(["debias", "--out", str(out), *SMALL]) == 0
    study = json.loads((out / "debias.json").read_text())
    assert study["format"] == "rrm-debias-study/2" and study["seeds"] == [0]
    (seed,) = study["per_seed"]
    methods = seed["methods"]
    assert set(methods) == set(study["summary"]) == {
        "original", "rrm_circuit", "rrm_circuit_edges", "plain_attribution", "random_features",
        "neuron_attribution",
        "activation_difference", "dfr", "balanced_retrain"}
    assert (out / "debias.png").stat().st_size > 10_000
    table = (out / "debias.md").read_text()
    assert table.startswith("| method (1 seeds, mean ± s.e.) |")
    rrm = methods["rrm_circuit"]
    # The chosen count is one of the candidates (or 0) and has the best validation worst group.
    validation = {int(n): v for n, v in rrm["validation"].items()}
    assert rrm["n_units"] in validation
    best = max(v["worst_group"] for v in validation.values())
    assert validation[rrm["n_units"]]["worst_group"] == best
    assert methods["random_features"]["n_units"] == rrm["n_units"]
    assert seed["split_sizes"]["test"] == sum(seed["test_group_sizes"].values())
    assert len(seed["test_group_sizes"]) == 20
    for m in methods.values():
        # Half the test images agree, half conflict: the average is their mean.
        assert m["average"] == pytest.approx((m["agree"] + m["conflict"]) / 2)
        assert m["worst_group"] <= min(m["agree"], m["conflict"]) + 1e-12


def test_debias_reads_a_data_file_and_refuses_bad_ones(tmp_path, capsys):
    from rrm_plugin.data.spurious import spurious_test_set, spurious_validation_set

    test, validation = spurious_test_set(), spurious_validation_set()
    pick = torch.arange(0, len(test.labels), 16)
    tensors = {}
    for split, batch in (("select", validation), ("validation", validation), ("test", test)):
        index = pick[pick < len(batch.labels)]
        tensors |= {f"{split}_images": batch.images[index], f"{split}_labels": batch.labels[index],
                    f"{split}_spurious": batch.markers[index]}
    path = write_tensors(tmp_path / "data.safetensors", tensors)
    out = tmp_path / "own"
    assert main(["debias", "--data", str(path), "--out", str(out), "--counts", "2",
                 "--random-draws", "1", "--seeds", "1"]) == 0
    (seed,) = json.loads((out / "debias.json").read_text())["per_seed"]
    assert "balanced_retrain" not in seed["methods"]  # no reference model by default
    assert seed["split_sizes"]["test"] == len(tensors["test_labels"])
    expect_user_error(capsys, ["debias", "--data", str(path), "--out", str(tmp_path / "s")],
                      "--data gives one fixed set of splits.*use --seeds 1")
    del tensors["test_spurious"]
    bad = write_tensors(tmp_path / "bad.safetensors", tensors)
    expect_user_error(capsys, ["debias", "--data", str(bad), "--seeds", "1", "--out",
                               str(tmp_path / "x")],
                      r"missing tensors \['test_spurious'\]")
    expect_user_error(capsys, ["debias", "--pool", "0", "--out", str(tmp_path / "y")],
                      "--pool must be at least 1")


@pytest.mark.parametrize("counts", [["0"], ["-3"]])
def test_debias_refuses_non_positive_counts(tmp_path, capsys, counts):
    expect_user_error(capsys, ["debias", "--counts", *counts, "--out", str(tmp_path / "z")],
                      rf"--counts must be at least 1, got {counts[0]}$")


def test_debias_variant_is_checked_before_work_and_reaches_the_study(tmp_path, capsys,
                                                                      monkeypatch):
    import rrm_plugin.workflows.debias as workflow
    from rrm_plugin.cli.debias import VARIANT_NAMES
    from rrm_plugin.zoo.spurious import VARIANTS

    assert tuple(VARIANTS) == VARIANT_NAMES
    expect_user_error(capsys, ["debias", "--variant", "corner", "--out", str(tmp_path / "a")],
                      "invalid choice: 'corner'")
    data = write_tensors(tmp_path / "d.safetensors", {"x": torch.zeros(1)})
    expect_user_error(capsys, ["debias", "--variant", "stroke", "--data", str(data), "--seeds",
                               "1", "--out", str(tmp_path / "b")],
                      "--data brings its own splits and --variant picks an embedded benchmark")
    seen = {}

    def fake_study(seeds, settings, *, workers=1, progress=True):
        seen.update(seeds=list(seeds), settings=settings)
        raise SystemExit(0)  # stop before any work

    monkeypatch.setattr(workflow, "debias_study", fake_study)
    with pytest.raises(SystemExit):
        main(["debias", "--variant", "stroke", "--seeds", "2", "--out", str(tmp_path / "c")])
    settings = seen["settings"]
    assert seen["seeds"] == [0, 1] and settings.benchmark.cue == "stroke"
    assert (settings.release, settings.reference_model) == ("rrm-digits-vit-stroke",
                                                            "digits-vit-stroke-balanced")
    with pytest.raises(SystemExit):
        main(["debias", "--seeds", "1", "--out", str(tmp_path / "d")])
    settings = seen["settings"]
    assert settings.benchmark.cue == "marker"
    assert (settings.release, settings.reference_model) == ("rrm-digits-vit-spurious",
                                                            "digits-vit-balanced")


@pytest.mark.slow
def test_debias_on_the_stroke_variant(tmp_path):
    out = tmp_path / "stroke"
    assert main(["debias", "--variant", "stroke", "--out", str(out), *SMALL]) == 0
    study = json.loads((out / "debias.json").read_text())
    assert study["metadata"]["release"] == "rrm-digits-vit-stroke"
    assert study["metadata"]["reference_model"] == "digits-vit-stroke-balanced"
    assert "cue: stroke" in study["metadata"]["data"]
    (seed,) = study["per_seed"]
    assert seed["model"] == "digits-vit-stroke"
    assert {"rrm_circuit_edges", "balanced_retrain"} <= set(seed["methods"])
