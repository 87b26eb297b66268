"""The first-GPU check (benchmarks/gpu_check.py, gpu_compare.py): its tolerances on hand-made
differences, its exit status, and its CPU quick mode end to end (so it cannot rot before a GPU
runs it)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rrm_plugin.attribution.baselines import compute_baselines
from rrm_plugin.attribution.build import attribute
from tests.attribution.conftest import random_saes, sharp_vit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
from gpu_compare import (  # noqa: E402
    CURVE_ATOL,
    GRAPH_RTOL,
    compare_curves,
    compare_graphs,
    rel_diff,
)


@pytest.fixture
def graph():
    vit = sharp_vit()
    saes = random_saes(vit)
    images = torch.rand(25, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    baselines = compute_baselines(vit, saes, images[1:], progress=False)
    return attribute(vit, saes, images[:1], baselines=baselines)[0]


def test_rel_diff_known_answers():
    want = torch.tensor([2.0, -4.0])
    assert rel_diff(torch.tensor([2.0, -3.0]), want) == 0.25
    assert rel_diff(want, want) == 0.0
    assert rel_diff(torch.zeros(3), torch.zeros(3)) == 0.0
    assert rel_diff(torch.ones(3), torch.zeros(3)) == float("inf")
    assert rel_diff(torch.ones(2), torch.ones(3)) == float("inf")


@pytest.mark.parametrize("factor,ok", [(0.5, True), (2.0, False)])
def test_graph_edges_are_held_to_the_stated_tolerance(graph, factor, ok):
    other = copy.deepcopy(graph)
    edge = other.edges[0]
    k = int(edge.abs().argmax())
    edge.view(-1)[k] += factor * GRAPH_RTOL * float(edge.abs().max())
    result = compare_graphs(graph, other)
    assert result.ok is ok
    assert result.details["edges.0"] == pytest.approx(factor * GRAPH_RTOL, rel=1e-3)


def test_graph_scores_and_node_sets_are_checked(graph):
    other = copy.deepcopy(graph)
    other.layers[0].scores[0] += 1.0 + other.layers[0].scores.abs().max()
    assert not compare_graphs(graph, other).ok
    other = copy.deepcopy(graph)
    other.layers[1].features = other.layers[1].features + 1
    result = compare_graphs(graph, other)
    assert not result.ok and result.worst == float("inf")
    assert any("layer 1" in p for p in result.problems)


def test_curves_are_held_to_the_stated_tolerance():
    cpu = {"image_indices": [0, 3], "image_curves": {"rrm": {"insertion": {
        "probability": [[0.1, 0.5, 1.0], [0.2, 0.4, 0.8]]}}}}
    near = copy.deepcopy(cpu)
    near["image_curves"]["rrm"]["insertion"]["probability"][1][1] += 0.5 * CURVE_ATOL
    far = copy.deepcopy(cpu)
    far["image_curves"]["rrm"]["insertion"]["probability"][1][1] += 2 * CURVE_ATOL
    assert compare_curves(cpu, near).ok
    assert not compare_curves(cpu, far).ok
    other_images = {**copy.deepcopy(cpu), "image_indices": [0, 4]}
    assert not compare_curves(cpu, other_images).ok


def test_torchrun_on_one_gpu_is_skipped_with_the_reason():
    assert "NCCL" in gpu_check.torchrun_plan("cuda", 1)
    assert gpu_check.torchrun_plan("cuda", 2) is None
    assert gpu_check.torchrun_plan("cpu", 0) is None


def test_a_failed_step_makes_the_exit_status_1(tmp_path, monkeypatch):
    steps = {"good": lambda run, args: {"ok": True, "runs": []},
             "bad": lambda run, args: {"ok": False, "runs": [], "problems": ["edges differ"]},
             "broken": lambda run, args: 1 / 0}
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "o"),
                           "--steps", "good"]) == 0
    with pytest.raises(SystemExit):  # argparse: the choices are the real steps' names
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "o"), "--steps", "nope"])
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "o"),
                           "--steps", "good", "bad", "broken"])
    report = json.loads((tmp_path / "o" / "gpu_check.json").read_text())
    assert code == 1 and not report["ok"]
    assert report["steps"]["broken"]["error"].startswith("ZeroDivisionError")
    summary = (tmp_path / "o" / "summary.txt").read_text()
    assert "FAIL" in summary and "edges differ" in summary


@pytest.mark.slow
def test_the_cpu_quick_mode_runs_every_step(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu",
                           "--quick", "--threads", "2", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["steps"]) == list(gpu_check.STEPS)
    assert all(step["ok"] and not step.get("skipped") for step in report["steps"].values())
    assert "skipped" in report["steps"]["cuda_tests"]["summary"]  # no CUDA here
    attribution = report["steps"]["attribution"]
    assert attribution["graph_vs_cpu"]["ok"] and attribution["circuit_tracer_max_rel_diff"] < 1e-4
    assert report["steps"]["faithfulness"]["n_images"] == 2
    assert (out / "summary.txt").read_text().startswith("gpu_check on cpu")
