"""The debiasing method on the hand-built model of conftest.py, and its statistics by hand."""

import math

import pytest
import torch

from rrm_plugin.debias.ablation import Ablation, ablation_hooks, predict
from rrm_plugin.debias.evaluation import bootstrap_accuracy, group_accuracy
from rrm_plugin.debias.experiment import (
    EDGES,
    PLAIN,
    RRM,
    DebiasConfig,
    accuracy_of,
    run_debias,
    select_ablations,
)
from rrm_plugin.debias.scoring import (
    activation_difference_scores,
    attribution_feature_scores,
    neuron_attribution_scores,
)
from rrm_plugin.debias.selection import choose_count, random_ablation, rank_units
from rrm_plugin.replacement.splice import splice_saes
from tests.debias.conftest import HOOK, MARKER_LATENT, all_groups, planted_split

CONFLICTING = planted_split([0, 0, 1, 1], [1, 1, 0, 0], noise_seed=3)


def test_circuit_scores_select_the_planted_marker_latent_only(planted):
    model, saes, baselines = planted
    scores = attribution_feature_scores(model, saes, CONFLICTING, baselines=baselines).circuit
    ranking = rank_units(scores)
    # Only the marker latent pushes towards the marker's class; the digit latents push away.
    assert ranking.index.tolist() == [MARKER_LATENT]
    assert ranking.hook_names[int(ranking.hook[0])] == HOOK
    # Known answer: z = sqrt(2) on each of 4 tokens of the two images with a marker. The adjusted
    # logit of class 1 equals logit_1 = (a + 2 m) / std(v) (logit_0 = -logit_1), std(v) =
    # 1 / sqrt(2) frozen by the linearisation; latent 0 adds z / sqrt(2) to v_1 and removes it
    # from v_3, so d logit_1 / dz = sqrt(2) / std(v) = 2 per token, a quarter of it through the
    # mean over tokens. Score per image 4 * (2 / 4) * sqrt(2); the images without a marker give
    # 0; the mean over the 4 images is sqrt(2). The final LN's eps 1e-5 on var(v) = 1/2 makes
    # std(v) sqrt(1/2 + 1e-5): a factor 1 / sqrt(1 + 2e-5). Float32 leaves ~1e-7 relative.
    expected = math.sqrt(2) / math.sqrt(1 + 2e-5)
    assert scores[HOOK][MARKER_LATENT].item() == pytest.approx(expected, rel=1e-6)


def test_ablating_the_selected_latent_removes_the_markers_effect(planted):
    model, saes, baselines = planted
    ablation = Ablation("feature", {HOOK: torch.tensor([MARKER_LATENT])})
    with_marker = planted_split([0, 1], [1, 1])
    without = planted_split([0, 1], [0, 0])
    with splice_saes(model, saes, keep_error=True):
        hooks = ablation_hooks(ablation, baselines)
        edited = model.run_with_hooks(with_marker.images, fwd_hooks=hooks)
        clean = model.run_with_hooks(without.images, fwd_hooks=hooks)
    torch.testing.assert_close(edited, clean, atol=1e-5, rtol=0)
    assert model(with_marker.images).argmax(-1).tolist() == [1, 1]  # biased before
    split = all_groups(2)
    predicted = predict(model, split.images, saes=saes, ablation=ablation, baselines=baselines)
    assert predicted.tolist() == split.labels.tolist()


def test_neuron_attribution_known_answer(planted):
    model, saes, baselines = planted
    scores = neuron_attribution_scores(model, [HOOK], CONFLICTING, baselines=baselines)
    ranking = rank_units(scores)
    # The marker lives in residual dimensions 1 (+m) and 3 (-m), equally.
    assert sorted(ranking.index[:2].tolist()) == [1, 3]
    assert len(ranking.index) == 2
    assert scores[HOOK][1].item() == pytest.approx(scores[HOOK][3].item(), rel=1e-5)


def test_activation_difference_within_class_finds_the_marker_only(planted):
    """Across classes, on bias-conflicting images the digit is anti-correlated with the cue, so
    a plain difference ties the marker latent with both digit latents; within a class the digit
    latents are constant and only the marker latent differs (u = 4 sqrt(2) per firing image:
    cue 1 has the marker, cue 0 not, in both classes: difference u; cue 0: -u; max u)."""
    model, saes, _ = planted
    split = planted_split([0, 0, 1, 1, 0, 1], [1, 0, 0, 1, 0, 1], noise_seed=3)
    scores = activation_difference_scores(model, saes, split)[HOOK]
    expected = torch.tensor([1.0, 0, 0, 0, 0, 0], dtype=torch.float64) * 4 * math.sqrt(2)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert rank_units({HOOK: scores}).index.tolist() == [MARKER_LATENT]


def test_choose_count_takes_the_best_validation_worst_group(planted):
    model, saes, baselines = planted
    ranking = rank_units({HOOK: torch.tensor([0.1, 0.0, 0.5, 0.0, 0.0, 0.0]) +
                          torch.tensor([1.0, 0, 0, 0, 0, 0])})
    # Ranking: latent 0 (1.1), then latent 2 (0.5); ablating 2 as well breaks class 1 images.
    chosen = choose_count(model, ranking, all_groups(2), method="x", kind="feature",
                          counts=[1, 2, 5], baselines=baselines, saes=saes)
    assert chosen.ablation.as_lists() == {HOOK: [0]}
    assert sorted(chosen.validation) == [0, 1, 2]  # 5 is capped at the two positive units
    assert chosen.validation[0]["worst_group"] == 0.0  # class 0 with marker
    assert chosen.validation[1] == {"average": 1.0, "worst_group": 1.0}
    # Latent 4 never fires: ablating it too ties with ablating latent 0 alone; fewer units win.
    tied = rank_units({HOOK: torch.tensor([2.0, 0, 0, 0, 1.0, 0])})
    chosen = choose_count(model, tied, all_groups(2), method="x", kind="feature",
                          counts=[2, 1], baselines=baselines, saes=saes)
    assert chosen.validation[1] == chosen.validation[2]
    assert chosen.ablation.as_lists() == {HOOK: [0]}


def test_choose_count_ranks_by_worst_group_not_average(planted):
    """Ablating the marker fixes the one class-0 image with a marker but breaks the class-1
    images whose digit looks like a 0 (a = -1) and that only the marker got right: the worst
    group improves (0 -> 0.5) while the average drops (18/19 -> 14/19)."""
    model, saes, baselines = planted
    labels = [1] * 10 + [0] + [0] * 4 + [1] * 4
    markers = [1] * 10 + [1] + [0] * 4 + [0] * 4
    evidence = [-1.0] * 5 + [1.0] * 5 + [-1.0] + [-1.0] * 4 + [1.0] * 4
    validation = planted_split(labels, markers, evidence=evidence)
    ranking = rank_units({HOOK: torch.tensor([1.0, 0, 0, 0, 0, 0])})
    chosen = choose_count(model, ranking, validation, method="x", kind="feature",
                          counts=[1], baselines=baselines, saes=saes)
    assert chosen.validation[0] == pytest.approx({"average": 18 / 19, "worst_group": 0.0})
    assert chosen.validation[1] == pytest.approx({"average": 14 / 19, "worst_group": 0.5})
    assert chosen.ablation.size == 1


def test_plain_attribution_is_the_full_graph_and_the_circuit_its_pruned_part(planted):
    model, saes, baselines = planted
    unpruned = attribution_feature_scores(model, saes, CONFLICTING, baselines=baselines,
                                          node_threshold=1.0, edge_threshold=1.0)
    pruned = attribution_feature_scores(model, saes, CONFLICTING, baselines=baselines,
                                        node_threshold=0.3, edge_threshold=1.0)
    full = unpruned.full[HOOK]
    # The full graph does not depend on the pruning; with thresholds 1 nothing is pruned.
    torch.testing.assert_close(pruned.full[HOOK], full)
    torch.testing.assert_close(unpruned.circuit[HOOK], full)
    torch.testing.assert_close(unpruned.edges[HOOK], full)  # one layer: its logit edges
    # Every active latent has its mean node score: the marker latent its known sqrt(2) (see
    # above), the digit latents negative (they push away from the cue's class).
    assert set(torch.nonzero(full)[:, 0].tolist()) == {0, 2, 3}
    assert full[0].item() == pytest.approx(math.sqrt(2) / math.sqrt(1 + 2e-5), rel=1e-6)
    assert (full[[2, 3]] < 0).all()
    kept = set(torch.nonzero(pruned.circuit[HOOK])[:, 0].tolist())
    assert kept < {0, 2, 3}
    for latent in kept:
        assert pruned.circuit[HOOK][latent].item() == pytest.approx(full[latent].item())


def test_agree_and_conflict_accuracy_known_answer():
    # Groups: 2 * label + conflicting. Images 0-3 agree (cue = label), 4-7 conflict.
    split = all_groups(2)  # labels [0, 0, 1, 1] x 2, markers [0, 1, 0, 1] x 2
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5, 1.0])
    # Agreeing: images 0, 3, 4, 7 -> 1, 1, 1, 1; conflicting: 1, 2, 5, 6 -> 0, 1, 0, 0.5.
    acc = accuracy_of(correct, split)
    assert acc.agree == 1.0
    assert acc.conflict == pytest.approx(1.5 / 4)
    assert acc.average == pytest.approx(5.5 / 8)
    # Worst group: class 0 with the marker of class 1 (images 1 and 5): 0.
    assert acc.worst_group == 0.0 and acc.per_group["0/disagree"] == 0.0
    assert acc.per_group["1/disagree"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="cue agrees and images whose cue conflicts"):
        accuracy_of(torch.ones(2), planted_split([0, 1], [0, 1]))


def test_feature_ablation_acts_on_the_sae_latents_hook(planted):
    _, _, baselines = planted
    hooks = ablation_hooks(Ablation("feature", {HOOK: torch.tensor([0])}), baselines)
    assert [name for name, _ in hooks] == [f"{HOOK}.hook_sae_acts_post"]
    hooks = ablation_hooks(Ablation("neuron", {HOOK: torch.tensor([0])}), baselines)
    assert [name for name, _ in hooks] == [HOOK]


def test_ablation_writes_the_per_position_baselines(planted):
    model, saes, zeros = planted
    base = zeros.features[HOOK] + torch.arange(4.0)[:, None] * 10 + torch.arange(6.0)
    baselines = zeros.__class__(zeros.statistic, {HOOK: base}, zeros.errors, zeros.resid,
                                zeros.fingerprints, zeros.n_images)
    images = all_groups(1).images
    ablation = Ablation("feature", {HOOK: torch.tensor([0, 3])})
    name = f"{HOOK}.hook_sae_acts_post"
    with splice_saes(model, saes, keep_error=True):
        _, clean = model.run_with_cache(images, names_filter=name)
        with model.hooks(fwd_hooks=ablation_hooks(ablation, baselines)):
            _, edited = model.run_with_cache(images, names_filter=name)
    torch.testing.assert_close(edited[name][:, :, [0, 3]], base[:, [0, 3]].expand(4, 4, 2))
    torch.testing.assert_close(edited[name][:, :, [1, 2, 4, 5]], clean[name][:, :, [1, 2, 4, 5]])


def test_selection_never_reads_the_test_split(planted):
    model, saes, baselines = planted
    selection = planted_split([0, 1] * 8 + [0, 1], [0, 1] * 8 + [1, 0], noise_seed=1)
    validation = all_groups(3, noise_seed=2)
    test = all_groups(4, noise_seed=5)
    config = DebiasConfig(counts=(1, 2), random_draws=3, dfr_cs=(1.0, 0.1))
    first = run_debias(model, saes, selection=selection, validation=validation, test=test,
                       baselines=baselines, config=config)
    permuted = test._replace(labels=test.labels[torch.randperm(len(test.labels),
                                                generator=torch.Generator().manual_seed(0))])
    second = run_debias(model, saes, selection=selection, validation=validation, test=permuted,
                        baselines=baselines, config=config)
    for method in (RRM, EDGES, PLAIN, "neuron_attribution", "activation_difference",
                   "random_features"):
        assert first.selections[method].ablation.as_lists() == \
            second.selections[method].ablation.as_lists()
        assert first.selections[method].validation == second.selections[method].validation
    assert first.selections[RRM].ablation.as_lists() == {HOOK: [MARKER_LATENT]}
    assert first.selections[EDGES].ablation.as_lists() == {HOOK: [MARKER_LATENT]}
    assert first.selections["random_features"].ablation.size == 1  # the RRM's number
    assert first.dfr == second.dfr  # DFR trains and chooses C on validation only
    assert first.accuracy[RRM].worst_group == 1.0
    assert first.accuracy["original"].worst_group == 0.0
    assert first.accuracy["original"].agree == 1.0  # biased: right when the marker agrees
    # The test labels do reach the evaluation.
    assert first.accuracy["original"] != second.accuracy["original"]
    assert set(select_ablations(model, saes, selection=selection, validation=validation,
                                baselines=baselines, config=config)) == \
        {RRM, EDGES, PLAIN, "neuron_attribution", "activation_difference"}
    assert set(first.to_json_dict()["methods"]) == {
        "original", RRM, EDGES, PLAIN, "random_features", "neuron_attribution",
        "activation_difference", "dfr"}


def test_group_accuracy_known_answer():
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 3, 3, 3, 3])
    result = group_accuracy(correct, groups)
    assert result.per_group == {0: 0.5, 1: 1.0, 3: 0.875}
    assert result.sizes == {0: 2, 1: 2, 3: 4}
    assert (result.worst, result.worst_group) == (0, 0.5)
    assert result.average == pytest.approx(6.5 / 8)  # over images, not the mean of groups


def test_bootstrap_intervals_and_paired_margins():
    groups = torch.tensor([0] * 10 + [1] * 10)
    perfect = torch.ones(20)
    half = torch.tensor([1.0, 0.0] * 5 + [1.0] * 10)  # group 0 at 50%
    result = bootstrap_accuracy({"a": perfect, "b": half}, groups, reference="a",
                                n_bootstrap=400, seed=0)
    assert result.worst_group["a"] == (1.0, 1.0, 1.0)  # nothing to resample away
    b = result.worst_group["b"]
    assert b.estimate == 0.5 and b.low < 0.5 < b.high and b.high <= 1.0
    margin = result.worst_group_margin["b"]
    assert margin.estimate == 0.5
    # Paired: the margin's resamples are 1 - (b's worst group), so the interval mirrors b's.
    assert margin.low == pytest.approx(1 - b.high) and margin.high == pytest.approx(1 - b.low)
    # Group sizes are fixed, so the average is (mean of group 0 + 1) / 2 in every resample.
    assert result.average["b"].estimate == 0.75
    assert 0.5 < result.average["b"].low < 0.75 < result.average["b"].high < 1.0
    # Resampling within groups: a method right on group 1 only averages 0.5 in every resample;
    # two identical methods differ by exactly 0 in every paired resample.
    split = torch.tensor([0.0] * 10 + [1.0] * 10)
    result = bootstrap_accuracy({"b": half, "same": half.clone(), "split": split}, groups,
                                reference="b", n_bootstrap=400, seed=1)
    assert result.average["split"] == (0.5, 0.5, 0.5)
    assert result.worst_group_margin["same"] == (0.0, 0.0, 0.0)


def test_random_ablation_draws_distinct_units_across_hooks():
    draw = random_ablation({"a": 3, "b": 5}, 6, kind="feature",
                           generator=torch.Generator().manual_seed(0))
    flat = [("a", i) for i in draw.units["a"].tolist()] + \
        [("b", i) for i in draw.units["b"].tolist()]
    assert len(set(flat)) == 6 and all(0 <= i < (3 if h == "a" else 5) for h, i in flat)
    with pytest.raises(ValueError, match="cannot draw 9 of 8"):
        random_ablation({"a": 3, "b": 5}, 9, kind="feature", generator=torch.Generator())


def test_bad_inputs_name_what_is_wrong(planted):
    model, saes, baselines = planted
    split = all_groups(1)
    with pytest.raises(ValueError, match="test labels must be classes in \\[0, 2\\)"):
        split._replace(labels=split.labels + 5).check(name="test", n_classes=2)
    with pytest.raises(ValueError, match="validation images contain NaN"):
        split._replace(images=split.images * float("nan")).check(name="validation")
    with pytest.raises(IndexError, match="must be in \\[0, 6\\)"):
        ablation_hooks(Ablation("feature", {HOOK: torch.tensor([6])}), baselines)
    with pytest.raises(ValueError, match="unknown unit kind"):
        Ablation("latent", {})
    with pytest.raises(ValueError, match="no bias-conflicting images"):
        select_ablations(model, saes, selection=planted_split([0, 1], [0, 1]),
                         validation=split, baselines=baselines)
    with pytest.raises(ValueError, match="counts must be positive integers"):
        DebiasConfig(counts=(0, 2))
    with pytest.raises(ValueError, match="node_threshold must be in \\(0, 1\\], got 0"):
        DebiasConfig(node_threshold=0)
    with pytest.raises(ValueError, match="random_draws must be at least 1, got 0"):
        DebiasConfig(random_draws=0)
