"""Faithfulness protocol on a tiny model and on hand-built curves: end points, counts, the three
AUC axes, margins, per-image curves, the authors' random rule and criteria, the frozen SAE std."""

import json

import numpy as np
import pytest
import torch

from rrm_plugin.attribution.forward import attribution_forward
from rrm_plugin.attribution.linearise import NONE, SAE_LN_EPS, linearised
from rrm_plugin.circuits.pruning import (
    PAPER_SWEEP,
    THRESHOLD_SWEEP,
    node_rule,
    threshold_rule,
    topk_rule,
)
from rrm_plugin.metrics.faithfulness import (
    METHODS,
    NON_LINEARISED,
    FaithfulnessConfig,
    Layout,
    evaluate_faithfulness,
    method_masks,
    method_scores,
    sae_layout,
)
from rrm_plugin.metrics.faithfulness_methods import _dense_rrm_scores
from rrm_plugin.metrics.faithfulness_plot import plot_faithfulness
from rrm_plugin.metrics.faithfulness_result import (
    AXES,
    SCORED,
    FaithfulnessResult,
    auc,
    axis_positions,
    image_aucs,
    paired_margin,
)
from rrm_plugin.replacement.splice import splice_saes
from tests.circuits.test_circuit import baseline_model_logits
from tests.metrics.oracles import adjusted, trapezoid_auc

SWEEP = (0.0, 0.1, 0.5, 1.0)


@pytest.fixture
def result(vit, saes, reference_images, baselines):
    images = reference_images[:6]
    labels = vit(images).argmax(-1).detach()  # all correct by construction
    config = FaithfulnessConfig(sweep=SWEEP, batch_size=4)
    return evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, config=config,
                                 progress=False), images, labels


# ---- AUC axes and margins on hand-built curves -----------------------------------------------


def test_auc_is_the_mean_trapezoid_height():
    assert auc([0.0, 1.0]) == pytest.approx(0.5)
    assert auc([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert auc([0.0, 1.0, 1.0]) == pytest.approx(0.75)
    # Over x: trapezoids 0.1 * 0.5 + 0.4 * 1 + 0.5 * 1, divided by the range 1.
    assert auc([0.0, 1.0, 1.0, 1.0], x=[0.0, 0.1, 0.5, 1.0]) == pytest.approx(0.95)
    assert auc([0.0, 2.0], x=[0.5, 0.7]) == pytest.approx(1.0)  # divided by the range 0.2
    assert auc([3.0], x=[0.0]) == 3.0 and auc([1.0, 3.0], x=[0.2, 0.2]) == 2.0
    with pytest.raises(ValueError, match="2 points but the axis has 3"):
        image_aucs(np.zeros((1, 2)), x=np.zeros(3))


def test_axis_positions_index_p_and_nodes():
    sweep = (0.0, 0.1, 0.5, 1.0)
    counts = np.array([[0, 2, 6, 10], [0, 4, 6, 10]], dtype=float)
    np.testing.assert_allclose(axis_positions("index", sweep=sweep, node_counts=counts,
                                              node_total=10), [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(axis_positions("p", sweep=sweep, node_counts=counts,
                                              node_total=10), sweep)
    # The mean count over images, as a fraction of the node total.
    nodes = axis_positions("nodes", sweep=sweep, node_counts=counts, node_total=10)
    np.testing.assert_allclose(nodes, [0, 0.3, 0.6, 1.0])
    # A fraction of the node total, not of the largest circuit (a sweep may stop short of 1).
    np.testing.assert_allclose(axis_positions("nodes", sweep=sweep, node_counts=counts,
                                              node_total=20), [0, 0.15, 0.3, 0.5])
    y = np.array([[0.0, 1.0, 1.0, 1.0]])
    assert image_aucs(y, x=nodes)[0] == pytest.approx(0.3 * 0.5 + 0.3 + 0.4)
    with pytest.raises(ValueError, match="unknown AUC axis 'log'"):
        axis_positions("log", sweep=sweep, node_counts=counts, node_total=10)


def hand_result() -> FaithfulnessResult:
    """Two methods, three images, sweep (0, .1, .5, 1); known AUCs on every axis."""
    config = FaithfulnessConfig(sweep=(0.0, 0.1, 0.5, 1.0), methods=("rrm", "random"))
    ones = np.ones((3, 4))
    rrm = np.array([[0.0, 2.0, 2.0, 2.0], [0.0, 4.0, 4.0, 4.0], [0.0, 6.0, 6.0, 6.0]])
    random = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 3.0, 3.0]])
    counts = np.array([0.0, 2.0, 6.0, 10.0]) * ones
    curves = {m: {mode: {"adjusted_logit": y, "logit": y, "probability": y / 10,
                         "accuracy": (y > 0).astype(float), "node_count": counts}
                  for mode in ("insertion", "deletion")}
              for m, y in (("rrm", rrm), ("random", random))}
    return FaithfulnessResult(config=config, image_indices=[0, 1, 2], image_curves=curves,
                              node_totals={"rrm": 10, "random": 10})


def test_result_aucs_on_each_axis_and_margins_with_standard_errors():
    res = hand_result()
    # rrm image 1 (height 2 after the first point): index (1 + 2 + 2) / 3, p 0.1 + 0.8 + 1,
    # nodes (x = 0, .2, .6, 1) 0.2 + 0.8 + 0.8.
    expected = {"index": 5 / 3, "p": 1.9, "nodes": 1.8}
    for axis, per_height in expected.items():
        est = res.auc("rrm", "insertion", "adjusted_logit", axis=axis)
        assert est.mean == pytest.approx(per_height * 2)  # mean height over images: 2x image 1
        assert est.se == pytest.approx(per_height / np.sqrt(3))  # AUCs (1, 2, 3) x per_height
    # random: 0 until p = .1, then rises to its height h at .5: index h (0.5 + 1) / 3.
    assert res.auc("random", "insertion", "adjusted_logit", axis="index").mean == pytest.approx(
        2 * 1.5 / 3)
    assert res.auc("random", "insertion", "adjusted_logit", axis="p").mean == pytest.approx(
        2 * (0.4 * 0.5 + 0.5))
    # Index axis: image i has AUC 5/3 r_i (rrm) and 0.5 r_i (random), r = 1, 2, 3. The ratio is
    # exactly 10/3 for every image, so its delta-method s.e. is 0; differences are 7/6 r_i.
    margin = res.margin("rrm", "random", axis="index")
    assert margin.ratio.mean == pytest.approx((5 / 3 * 2) / 1.0)
    assert margin.ratio.se == pytest.approx(0.0, abs=1e-12)
    diffs = 7 / 6 * np.array([1.0, 2.0, 3.0])
    assert margin.difference.mean == pytest.approx(diffs.mean())
    assert margin.difference.se == pytest.approx(diffs.std(ddof=1) / np.sqrt(3))
    assert res.margins() == ["random"]


def test_paired_margin_known_answers():
    margin = paired_margin(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]))
    assert margin.difference.mean == pytest.approx(1.0)
    assert margin.difference.se == pytest.approx(1 / np.sqrt(3))
    # ratio 2; delta method: s.e. of mean((a - 2 b) / mean(b)) = s.e. of (-1, 0, 1).
    assert margin.ratio.mean == pytest.approx(2.0)
    assert margin.ratio.se == pytest.approx(1 / np.sqrt(3))
    # R = 3 / 2; (a - R b) / mean(b) = (0.25, 0, -0.25). Not the s.e. of the per-image ratios.
    margin = paired_margin(np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    assert margin.ratio.mean == pytest.approx(1.5)
    assert margin.ratio.se == pytest.approx(0.25 / np.sqrt(3))


def test_json_per_image_curves_recompute_every_reported_auc():
    res = hand_result()
    data = json.loads(json.dumps(res.to_json_dict()))
    check_json_aucs(data)
    assert data["headline_axis"] == "nodes"
    assert data["margins"]["vs"]["random"]["p"]["insertion"]["adjusted_logit"]["ratio"][
        "mean"] == pytest.approx(res.margin("rrm", "random", axis="p").ratio.mean)


def check_json_aucs(data):
    """Every AUC in the JSON equals the one recomputed from its per-image curves."""
    sweep = data["config"]["sweep"]
    for method, modes in data["image_curves"].items():
        for mode, quantities in modes.items():
            counts = np.array(quantities["node_count"])
            assert counts.shape == (data["n_images"], len(sweep))
            x = {"index": np.linspace(0, 1, len(sweep)), "p": np.array(sweep),
                 "nodes": counts.mean(0) / data["node_totals"][method]}
            for axis in AXES:
                np.testing.assert_allclose(data["axes"][axis][method][mode], x[axis])
                for q in SCORED:
                    y = np.array(quantities[q])
                    per_image = trapezoid_auc(y, x[axis])
                    reported = data["auc"][axis][method][mode][q]
                    assert reported["mean"] == pytest.approx(per_image.mean(), abs=1e-9)
                    assert reported["se"] == pytest.approx(
                        per_image.std(ddof=1) / np.sqrt(len(per_image)), abs=1e-9)
                    # The mean curve's AUC is the mean per-image AUC.
                    assert auc(data["curves"][method][mode][q], x=x[axis]) == pytest.approx(
                        reported["mean"], abs=1e-9)


# ---- the run on a tiny model -----------------------------------------------------------------


def test_curve_end_points_and_counts(result, vit, saes, baselines):
    res, images, labels = result
    assert set(res.curves) == set(METHODS) and len(res.image_indices) == 6
    clean_adj = adjusted(vit(images).detach(), labels)
    base_adj = adjusted(baseline_model_logits(vit, saes, images, baselines), labels)
    for method in ("rrm", "rrm_edge", "non_linearised", "random", "random_authors"):
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
    # The authors' random rule: int(p * 33) per layer (the RRM rule: int(p * n_max) of the same).
    assert res.curves["random_authors"]["insertion"]["node_count"] == [0.0, 2 * 3.0, 2 * 16.0,
                                                                       2 * 33.0]
    counts = res.curves["rrm"]["insertion"]["node_count"]
    assert counts == sorted(counts)
    assert res.node_totals == {**{m: 66 for m in METHODS}, "neuron": 2 * 16}
    assert set(res.influence_circuit) >= {"nodes", "circuit_tracer_replacement_score",
                                          "circuit_tracer_completeness_score",
                                          "insertion_probability"}
    assert "completeness_score" not in res.influence_circuit


def test_outputs_json_table_and_png(result, tmp_path):
    res, _, _ = result
    data = json.loads(json.dumps(res.to_json_dict()))
    check_json_aucs(data)
    assert data["auc"]["nodes"]["rrm"]["insertion"]["adjusted_logit"]["mean"] == pytest.approx(
        res.auc("rrm", "insertion", "adjusted_logit", axis="nodes").mean)
    assert len(data["image_curves"]["rrm"]["insertion"]["probability"]) == 6
    assert set(data["margins"]["vs"]) == set(METHODS) - {"rrm"}
    table = res.table()
    assert "| rrm |" in table and "| random_authors | nodes |" in table
    rows = [line for line in table.splitlines() if line.startswith("| neuron |")]
    assert len(rows) == 2 + len(AXES)  # two AUC tables, one margin row per axis
    margin = res.margin("rrm", "random")
    assert margin.difference.se >= 0 and isinstance(margin.ratio.mean, float)
    plot_faithfulness(res, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_batching_does_not_change_the_curves(vit, saes, reference_images, baselines):
    images = reference_images[:5]
    labels = vit(images).argmax(-1).detach()
    runs = [evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, progress=False,
                                  config=FaithfulnessConfig(sweep=SWEEP, batch_size=bs,
                                                            methods=("rrm", "neuron")))
            for bs in (2, 5)]
    for method in ("rrm", "neuron"):
        for q in ("adjusted_logit", "probability"):
            a, b = (r.image_curves[method]["deletion"][q] for r in runs)
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_skip_early_layers_leaves_them_unmasked(vit, saes, reference_images, baselines):
    images = reference_images[:4]
    labels = vit(images).argmax(-1).detach()
    config = FaithfulnessConfig(sweep=SWEEP, methods=("rrm", "random_authors", "neuron"),
                                skip_early_layers=1)
    res = evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, config=config,
                                progress=False)
    # Layer 0 clean, layer 1 (every latent and its error) at baseline.
    top = "blocks.1.hook_resid_post"
    hooks = [(f"{top}.hook_sae_acts_post",
              lambda z, hook: baselines.features[top].expand_as(z)),
             (f"{top}.hook_sae_error", lambda e, hook: baselines.errors[top].expand_as(e))]
    with torch.no_grad(), splice_saes(vit, saes, keep_error=True):
        only_top = adjusted(vit.run_with_hooks(images, fwd_hooks=hooks), labels)
    for method in ("rrm", "random_authors"):
        ins, dele = res.curves[method]["insertion"], res.curves[method]["deletion"]
        assert ins["adjusted_logit"][0] == pytest.approx(float(only_top), abs=1e-4)
        assert dele["adjusted_logit"][-1] == pytest.approx(float(only_top), abs=1e-4)
        assert ins["node_count"][-1] == 33  # only the masked layer counts
    assert res.node_totals == {"rrm": 33, "random_authors": 33, "neuron": 16}
    assert res.curves["neuron"]["insertion"]["node_count"] == [0.0, 1.0, 8.0, 16.0]
    with pytest.raises(ValueError, match="leaves no SAE layer to mask"):
        evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, progress=False,
                              config=FaithfulnessConfig(skip_early_layers=2))


# ---- circuits per method: the authors' random rule and criteria ------------------------------


def hand_layout() -> Layout:
    return Layout(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], [9, 17], 4, 0,
                  torch.device("cpu"))


def generators(batch):
    """Tie-order generators per method; the random methods draw from one generator per image."""
    gens = {m: torch.Generator().manual_seed(i) for i, m in enumerate(METHODS)}
    return {**gens, **{m: [torch.Generator().manual_seed(100 * (i + 1) + j) for j in range(batch)]
                       for i, m in enumerate(("random", "random_authors"))}}


def test_authors_random_rule_counts_and_redraws_at_every_p():
    layout, gens = hand_layout(), generators(50)
    config = FaithfulnessConfig(methods=("random_authors",))
    for value, counts in ((0.5, [4, 8]), (0.9, [8, 15]), (0.2, [1, 3])):
        masks = method_masks({}, value=value, config=config, layout=layout, batch=50,
                             generators=gens)["random_authors"]
        assert [m.sum(-1).tolist() for m in masks] == [[c] * 50 for c in counts]
    # Redrawn at every sweep point: a smaller circuit is not a subset of the next larger one.
    small, large = (method_masks({}, value=v, config=config, layout=layout, batch=50,
                                 generators=gens)["random_authors"][1] for v in (0.2, 0.5))
    assert (small & ~large).any()
    again = method_masks({}, value=0.5, config=config, layout=layout, batch=50,
                         generators=gens)["random_authors"][1]
    assert not torch.equal(again, large)


def test_criteria_in_method_masks():
    layout, gens = hand_layout(), generators(3)
    scores = {"rrm": [torch.randn(3, 9, generator=torch.Generator().manual_seed(0)),
                      torch.randn(3, 17, generator=torch.Generator().manual_seed(1))]}

    def masks(criterion, value, ties="raw"):
        config = FaithfulnessConfig(methods=("rrm", "random"), criterion=criterion, ties=ties)
        return method_masks(scores, value=value, config=config, layout=layout, batch=3,
                            generators=gens)

    # The tie rule reaches the selection (at 0.5 the rule keeps slots with scores <= 0).
    by_index = masks("topn", 0.5, ties="index")["rrm"]
    for got, want in zip(by_index, node_rule(scores["rrm"], p=0.5, n_max=17, ties="index"),
                         strict=True):
        assert torch.equal(got, want)
    assert any(not torch.equal(a, b) for a, b in zip(by_index, masks("topn", 0.5)["rrm"],
                                                     strict=True))

    # topk: a fraction of each layer's own size; random (ours) copies the counts.
    topk = masks("topk", 0.5)
    assert [m.sum(-1).tolist() for m in topk["rrm"]] == [[4] * 3, [8] * 3]
    assert [m.sum(-1).tolist() for m in topk["random"]] == [[4] * 3, [8] * 3]
    for got, want in zip(topk["rrm"], topk_rule(scores["rrm"], k=0.5), strict=True):
        assert torch.equal(got, want)
    # topn: a fraction of the largest layer (17), so int(0.5 * 17) = 8 in both layers.
    assert [m.sum(-1).tolist() for m in masks("topn", 0.5)["rrm"]] == [[8] * 3, [8] * 3]
    # threshold: the rule itself, except that 0 and 1 are the empty and the full circuit.
    for got, want in zip(masks("threshold", 0.5)["rrm"], threshold_rule(scores["rrm"], tau=0.5),
                         strict=True):
        assert torch.equal(got, want)
    assert all(m.all() for m in masks("threshold", 1.0)["rrm"])
    assert not any(m.any() for m in masks("threshold", 0.0)["rrm"])


def test_random_method_draws_its_own_slots_with_the_rrm_counts():
    layout = Layout(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], [33, 33], 4, 0,
                    torch.device("cpu"))
    scores = {"rrm": [torch.randn(40, 33, generator=torch.Generator().manual_seed(s))
                      for s in (0, 1)]}
    config = FaithfulnessConfig(methods=("rrm", "random"))

    def masks():
        return method_masks(scores, value=0.2, config=config, layout=layout, batch=40,
                            generators=generators(40))

    got = masks()
    for rrm, random in zip(got["rrm"], got["random"], strict=True):
        assert torch.equal(rrm.sum(-1), random.sum(-1))  # floor(.2 * 33) = 6 per image
        assert (rrm.sum(-1) == 6).all()
        # Not the RRM circuit: 6 of 33 slots drawn at random overlap it in ~1 slot on average.
        assert (rrm & random).sum() < 0.5 * rrm.sum()
    again = masks()  # seeded: the same draws from the same generators
    assert all(torch.equal(a, b) for a, b in zip(got["random"], again["random"], strict=True))


def test_config_sweeps_and_errors():
    assert FaithfulnessConfig().sweep == PAPER_SWEEP
    assert FaithfulnessConfig(criterion="topk").sweep == PAPER_SWEEP
    assert FaithfulnessConfig(criterion="threshold").sweep == THRESHOLD_SWEEP
    with pytest.raises(ValueError, match="unknown faithfulness method"):
        FaithfulnessConfig(methods=("rrm", "lrp"))
    with pytest.raises(ValueError, match=r"sweep values must be in \[0, 1\]"):
        FaithfulnessConfig(sweep=(0.0, 2.0))
    with pytest.raises(ValueError, match="sweep values must be increasing"):
        FaithfulnessConfig(sweep=(0.5, 0.1))
    with pytest.raises(ValueError, match="unknown criterion 'topm'"):
        FaithfulnessConfig(criterion="topm")
    with pytest.raises(ValueError, match="unknown ties 'first'"):
        FaithfulnessConfig(ties="first")
    with pytest.raises(ValueError, match="skip_early_layers must be >= 0"):
        FaithfulnessConfig(skip_early_layers=-1)


def test_neuron_scores_are_gradient_times_delta(vit, saes, images, baselines):
    from tests.attribution.reference import frozen_backward

    layout = sae_layout(saes)
    y = vit(images).argmax(-1)
    config = FaithfulnessConfig(methods=("neuron",))
    got = method_scores(vit, saes, images, y, baselines=baselines, config=config,
                        layout=layout)["neuron"]
    # Oracle: the test's own frozen backward pass and metric.
    live = {}
    hooks = [(h, lambda t, hook: live.__setitem__(hook.name, t)) for h in layout.hook_names]
    with frozen_backward(vit), vit.hooks(fwd_hooks=hooks), torch.enable_grad():
        logits = vit(images.requires_grad_(True))
        chosen = logits.gather(-1, y[:, None])[:, 0] - logits.mean(-1)
        grads = torch.autograd.grad(chosen.sum(), [live[h] for h in layout.hook_names])
    for g, h, score in zip(grads, layout.hook_names, got, strict=True):
        want = (g * (live[h].detach() - baselines.resid[h])).sum(1)
        assert want.abs().max() > 0
        torch.testing.assert_close(score, want, rtol=1e-4, atol=1e-6)


# ---- without linearisation: the SAE input std stays a constant -------------------------------


def test_non_linearised_mode_freezes_only_the_sae_std(vit, saes, images, baselines):
    assert (NON_LINEARISED.attention_pattern, NON_LINEARISED.layer_norm_scale,
            NON_LINEARISED.gelu_gate, NON_LINEARISED.sae_input_std) == (False, False, False, True)
    sae = next(iter(saes.values()))
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    with linearised(vit, saes, config=NON_LINEARISED):
        out = sae.run_time_activation_norm_fn_in(x)
    (grad,) = torch.autograd.grad((w * out).sum(), x)
    # std constant: d/dx of (x - mean x) / (s + eps) is (w - mean w) / (s + eps).
    std = (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True).detach()
    torch.testing.assert_close(grad, (w - w.mean(-1, keepdim=True)) / (std + SAE_LN_EPS))

    layout = sae_layout(saes)
    y = vit(images).argmax(-1)
    config = FaithfulnessConfig(methods=("non_linearised",))
    got = method_scores(vit, saes, images, y, baselines=baselines, config=config,
                        layout=layout)["non_linearised"]
    for linearisation, same in ((NON_LINEARISED, True), (NONE, False)):
        want = _dense_rrm_scores(attribution_forward(vit, saes, images, baselines=baselines,
                                                     classes=y, linearisation=linearisation))
        close = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want, strict=True))
        assert close == same, linearisation


def test_sae_layout_orders_hooks_by_layer_number():
    from rrm_plugin.saes.training import new_topk_sae

    hooks = ["blocks.10.hook_resid_post", "blocks.2.hook_resid_post", "blocks.1.hook_resid_pre",
             "blocks.1.hook_resid_post"]
    saes = {h: new_topk_sae(d_in=4, d_sae=6 + i, k=1, hook_name=h, model_name="m")
            for i, h in enumerate(hooks)}
    layout = sae_layout(saes)
    assert layout.hook_names == ["blocks.1.hook_resid_post", "blocks.1.hook_resid_pre",
                                 "blocks.2.hook_resid_post", "blocks.10.hook_resid_post"]
    assert layout.sizes == [saes[h].cfg.d_sae + 1 for h in layout.hook_names]


def test_image_aucs_equal_the_hand_written_trapezoid_bit_for_bit():
    # The shipped faithfulness numbers were computed with the trapezoid written out by hand.
    rng = np.random.default_rng(0)
    for n in (2, 3, 11):
        y, x = rng.normal(size=(20, n)), np.sort(rng.uniform(size=n))
        np.testing.assert_array_equal(image_aucs(y, x=x), trapezoid_auc(y, x))
