"""Faithfulness protocol on a tiny model: curve end points, counts, AUC, outputs, errors."""

import json

import pytest
import torch

from rrm_plugin.metrics.faithfulness import (
    METHODS,
    FaithfulnessConfig,
    auc,
    evaluate_faithfulness,
    plot_faithfulness,
    select_images,
)
from tests.circuits.test_circuit import baseline_model_logits

SWEEP = (0.0, 0.1, 0.5, 1.0)


@pytest.fixture
def result(vit, saes, reference_images, baselines):
    images = reference_images[:6]
    labels = vit(images).argmax(-1).detach()  # all correct by construction
    config = FaithfulnessConfig(sweep=SWEEP, batch_size=4)
    return evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, config=config,
                                 progress=False), images, labels


def test_auc_is_the_mean_trapezoid_area():
    assert auc([0.0, 1.0]) == pytest.approx(0.5)
    assert auc([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert auc([0.0, 1.0, 1.0]) == pytest.approx(0.75)


def test_curve_end_points_and_counts(result, vit, saes, baselines):
    res, images, labels = result
    assert set(res.curves) == set(METHODS) and len(res.image_indices) == 6
    clean = vit(images).detach()
    clean_adj = (clean.gather(-1, labels[:, None])[:, 0] - clean.mean(-1)).mean()
    base = baseline_model_logits(vit, saes, images, baselines)
    base_adj = (base.gather(-1, labels[:, None])[:, 0] - base.mean(-1)).mean()
    for method in ("rrm", "rrm_edge", "non_linearised", "random"):
        ins, dele = res.curves[method]["insertion"], res.curves[method]["deletion"]
        assert ins["adjusted_logit"][-1] == pytest.approx(float(clean_adj), abs=1e-4)
        assert ins["adjusted_logit"][0] == pytest.approx(float(base_adj), abs=1e-4)
        assert dele["adjusted_logit"][0] == pytest.approx(float(clean_adj), abs=1e-4)
        assert dele["adjusted_logit"][-1] == pytest.approx(float(base_adj), abs=1e-4)
        assert ins["node_count"][0] == 0 and ins["node_count"][-1] == 2 * 33
        assert ins["accuracy"][-1] == 1.0
    neuron = res.curves["neuron"]["insertion"]
    assert neuron["adjusted_logit"][-1] == pytest.approx(float(clean_adj), abs=1e-4)
    assert neuron["node_count"] == [0.0, 2 * 1.0, 2 * 8.0, 2 * 16.0]  # floor(p * d_model) per layer
    assert res.curves["random"]["insertion"]["node_count"] == res.curves["rrm"]["insertion"][
        "node_count"]
    counts = res.curves["rrm"]["insertion"]["node_count"]
    assert counts == sorted(counts)
    assert set(res.influence_circuit) >= {"nodes", "replacement_score", "insertion_probability"}


def test_outputs_json_table_and_png(result, tmp_path):
    res, _, _ = result
    data = json.loads(json.dumps(res.to_json_dict()))
    assert data["auc"]["rrm"]["insertion"]["adjusted_logit"] == pytest.approx(
        res.auc("rrm", "insertion", "adjusted_logit"))
    assert len(data["image_auc"]["rrm"]["insertion"]["probability"]) == 6
    table = res.table()
    assert table.count("\n") == 1 + len(METHODS) and "| rrm |" in table
    mean, se = res.margin("rrm", "random")
    assert se >= 0 and isinstance(mean, float)
    path = plot_faithfulness(res, tmp_path / "f.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_batching_does_not_change_the_curves(vit, saes, reference_images, baselines):
    images = reference_images[:5]
    labels = vit(images).argmax(-1).detach()
    runs = [evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, progress=False,
                                  config=FaithfulnessConfig(sweep=SWEEP, batch_size=bs,
                                                            methods=("rrm", "neuron")))
            for bs in (2, 5)]
    for method in ("rrm", "neuron"):
        for q in ("adjusted_logit", "probability"):
            a, b = (r.curves[method]["deletion"][q] for r in runs)
            assert a == pytest.approx(b, abs=1e-5)


def test_image_selection_and_config_errors():
    correct = torch.arange(10) * 2
    assert torch.equal(select_images(correct, None, 42), correct)
    subset = select_images(correct, 4, 42)
    assert torch.equal(subset, select_images(correct, 4, 42)) and len(subset) == 4
    assert set(subset.tolist()) <= set(correct.tolist())
    with pytest.raises(ValueError, match="asked for 11 images but only 10"):
        select_images(correct, 11, 42)
    with pytest.raises(ValueError, match="unknown faithfulness method"):
        FaithfulnessConfig(methods=("rrm", "lrp"))
    with pytest.raises(ValueError, match=r"sweep values must be in \[0, 1\]"):
        FaithfulnessConfig(sweep=(0.0, 2.0))
