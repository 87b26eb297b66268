"""`rrm baselines`, `rrm trace`, `rrm faithfulness` and the demo hook on the embedded default."""

import json

import numpy as np
import pytest

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.graph import Graph
from rrm_plugin.cli.main import main
from tests.cli.conftest import expect_user_error
from tests.metrics.test_faithfulness import check_json_aucs


def test_baselines_command_writes_a_loadable_file(tmp_path):
    out = tmp_path / "b.safetensors"
    assert main(["baselines", "--n-images", "16", "--statistic", "mean", "--out", str(out)]) == 0
    loaded = Baselines.load(out)
    assert loaded.statistic == "mean" and loaded.n_images == 16
    assert set(loaded.hook_names) == {f"blocks.{i}.hook_resid_post" for i in range(3)}


def test_trace_writes_graph_circuit_and_figure(tmp_path, capsys):
    assert main(["trace", "0", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["circuit_nodes"] > 0 and 0 <= summary["circuit_tracer_replacement_score"] <= 1
    assert (tmp_path / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    assert "rrm-circuit-viewer/1" in (tmp_path / "circuit.html").read_text()
    graph = json.loads((tmp_path / "graph.json").read_text())
    assert graph["target"]["class"] == summary["target_class"] and graph["edges"]
    lossless = Graph.load(tmp_path / "graph.lossless")
    assert lossless.value == pytest.approx(summary["value"])
    out = capsys.readouterr().out
    assert "circuit:" in out
    listed = out.split(f"files in {tmp_path}: ", 1)[1].splitlines()[0].split(", ")
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "rrm-output.json")
    assert sorted(listed) == written and "graph.lossless.safetensors" in listed


def test_trace_rejects_bad_images(tmp_path, capsys):
    expect_user_error(capsys, ["trace", "5000", "--out", str(tmp_path)],
                      "image index 5000 out of range: the held-out set")
    import matplotlib.image

    matplotlib.image.imsave(tmp_path / "big.png", np.zeros((32, 32, 3)))
    expect_user_error(capsys, ["trace", str(tmp_path / "big.png"), "--out", str(tmp_path / "o")],
                      "is 32x32 pixels, model expects 24x24")
    expect_user_error(capsys, ["trace", str(tmp_path / "missing.png"), "--out",
                               str(tmp_path / "o")],
                      "no image file")
    expect_user_error(capsys, ["trace", "0", "--target", "12", "--out", str(tmp_path / "o")],
                      "unknown target class 12")


def test_trace_accepts_an_image_file(tmp_path):
    import matplotlib.image

    from rrm_plugin import load_test_set

    image = load_test_set("digits-vit").images[3].permute(1, 2, 0).numpy()
    matplotlib.image.imsave(tmp_path / "digit.png", image)
    assert main(["trace", str(tmp_path / "digit.png"), "--out", str(tmp_path / "o"),
                 "--no-viewer"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["metadata"]["file"].endswith("digit.png")
    assert (tmp_path / "o" / "graph.lossless.json").exists()
    assert not (tmp_path / "o" / "circuit.html").exists()  # --no-viewer


def test_faithfulness_command_small(tmp_path, capsys):
    argv = ["faithfulness", "--n-images", "6", "--methods", "rrm", "rrm_edge", "random",
            "random_authors", "neuron", "--out", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads((tmp_path / "faithfulness.json").read_text())
    assert data["n_images"] == 6
    methods = {"rrm", "rrm_edge", "random", "random_authors", "neuron"}
    assert set(data["image_curves"]) == methods
    assert {axis: set(v) for axis, v in data["auc"].items()} == {
        "index": methods, "p": methods, "nodes": methods}
    check_json_aucs(data)  # per-image curves reproduce every reported AUC
    assert (tmp_path / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "| rrm |" in out and "| random_authors | nodes |" in out
    assert "rrm vs random_authors: insertion AUC" in out
    # The influence-pruned circuits are tabulated, not only stored in the JSON.
    for name, value in data["influence_circuit"].items():
        assert f"| {name} | {value:.3f} |" in out
        assert f"| {name} | {value:.3f} |" in (tmp_path / "faithfulness.md").read_text()
    assert "circuit_tracer_completeness_score" in data["influence_circuit"]
    assert "not the RRM paper's Table 1 column" in out


def test_faithfulness_criterion_ties_and_skipped_layers(tmp_path):
    argv = ["faithfulness", "--n-images", "3", "--methods", "rrm", "random_authors",
            "--criterion", "threshold", "--ties", "random", "--skip-early-layers", "1",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads((tmp_path / "faithfulness.json").read_text())
    config = data["config"]
    assert (config["criterion"], config["ties"], config["skip_early_layers"]) == (
        "threshold", "random", 1)
    assert config["sweep"] == [0, .1, .2, .3, .4, .5, .6, .7, .8, .9, .99, .9999, 1]
    assert data["node_totals"] == {"rrm": 514, "random_authors": 514}  # layers 1, 2: 2 x 257
    counts = np.array(data["image_curves"]["random_authors"]["insertion"]["node_count"])
    assert counts[:, 5].tolist() == [2 * 128] * 3  # int(0.5 * 257) in each masked layer
    check_json_aucs(data)


def test_faithfulness_user_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "f")]
    expect_user_error(capsys, ["faithfulness", "--criterion", "topm", *out],
                      r"--criterion: unknown 'topm'; expected one of \['topn', 'topk', "
                      r"'threshold'\]")
    expect_user_error(capsys, ["faithfulness", "--ties", "first", *out],
                      r"--ties: unknown 'first'")
    expect_user_error(capsys, ["faithfulness", "--skip-early-layers", "-1", *out],
                      "--skip-early-layers must be at least 0, got -1")
    expect_user_error(capsys, ["faithfulness", "--skip-early-layers", "3", *out],
                      "--skip-early-layers 3 leaves no SAE layer to mask")


def test_trace_demo_reports_circuits(tmp_path, capsys):
    from rrm_plugin.workflows.demo import describe_circuit, trace_demo

    result = trace_demo(tmp_path, n_images=1)
    assert capsys.readouterr().out == ""  # library code prints nothing; `rrm demo` does
    line = describe_circuit(result["images"][0])
    assert line.startswith(f"image {result['images'][0]['test_index']} (label ")
    assert line.endswith(result["figures"][0])
    assert len(result["images"]) == 1 and result["figures"][0].endswith("circuit.png")
    report = result["images"][0]
    assert report["insertion"]["adjusted_logit"] > report["deletion"]["adjusted_logit"]
    assert (tmp_path / "circuits" / "circuits.json").is_file()
