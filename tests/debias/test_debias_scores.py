"""Debias scores and rankings with hand-computed answers on the planted model (conftest.py).

Summed over the 4 tokens, the planted SAE's latents are, with u = 4 sqrt(2):
latent 0 = u max(m, 0), latent 1 = u max(-m, 0), latent 2 = u max(a, 0), latent 3 = u max(-a, 0),
latents 4 and 5 never fire (a: the digit channel, m: the marker channel, both free per image).
"""

import math

import pytest
import torch

import rrm_plugin.debias.experiment as experiment
from rrm_plugin.debias.data import SpuriousSplit
from rrm_plugin.debias.experiment import select_ablations
from rrm_plugin.debias.scoring import (
    activation_difference_scores,
    neuron_attribution_scores,
    within_class_difference,
)
from rrm_plugin.debias.selection import rank_units, top_ablation
from tests.debias.conftest import HOOK, planted_images, planted_split

U = 4 * math.sqrt(2)
LABELS = torch.tensor([0, 0, 0, 1, 1, 1])
CUES = torch.tensor([0, 1, 1, 1, 0, 2])


def test_within_class_difference_known_answer():
    """Per class y and cue v: mean over the class's images with cue v minus over its others;
    mean over the classes where both exist; max over v.

    unit 0, [1, 3, 5, 2, 4, 8]: class 0: v=0: 1 - 4 = -3, v=1: 4 - 1 = 3; class 1: v=1:
        2 - 6 = -4, v=0: 4 - 5 = -1, v=2: 8 - 3 = 5. v=0: -2, v=1: -0.5, v=2: 5 -> 5.
    unit 1 follows the label only ([0, 0, 0, 7, 7, 7]): 0 within every class, although across
        classes it separates cue 2 (7) from the others (3.5).
    unit 2, [0, 6, 0, 0, 0, 0]: class 0: v=0: -3, v=1: 3; class 1: 0 -> v=1: (3 + 0) / 2.
    """
    acts = {"h": torch.tensor([[1.0, 0, 0], [3, 0, 6], [5, 0, 0], [2, 7, 0], [4, 7, 0],
                               [8, 7, 0]])}
    scores = within_class_difference(acts, labels=LABELS, cues=CUES)["h"]
    torch.testing.assert_close(scores, torch.tensor([5.0, 0.0, 1.5], dtype=torch.float64))


def test_activation_difference_uses_the_cue_not_the_label(planted):
    """On the planted model's latents (latent 0 = u max(m, 0)): a known answer, and swapping
    cue and label changes it."""
    model, saes, _ = planted
    marker = torch.tensor([1.0, 0.0, 2.0, 0.0, 3.0, 1.0])
    split = SpuriousSplit(planted_images(LABELS, marker), LABELS, CUES)
    scores = activation_difference_scores(model, saes, split)[HOOK]
    # Latent 0 activations u [1, 0, 2, 0, 3, 1]: class 0: v=0: 1 - 1 = 0, v=1: 1 - 1 = 0;
    # class 1: v=1: 0 - 2 = -2, v=0: 3 - 0.5 = 2.5, v=2: 1 - 1.5 = -0.5. v=0: 1.25 -> 1.25 u.
    assert scores[0].item() == pytest.approx(1.25 * U, rel=1e-5)
    swapped = activation_difference_scores(model, saes, split._replace(
        labels=CUES.clamp(max=1), spurious=LABELS))[HOOK]
    assert swapped[0].item() != pytest.approx(scores[0].item(), rel=1e-2)


def test_activation_difference_needs_two_cue_values_within_a_class(planted):
    model, saes, _ = planted
    split = SpuriousSplit(planted_images(LABELS, torch.zeros(6)), LABELS, LABELS.clone())
    with pytest.raises(ValueError, match="within some class, images with different cue values"):
        activation_difference_scores(model, saes, split)


def test_selection_scores_attribution_on_conflicting_images_and_difference_on_all(
        planted, monkeypatch):
    model, saes, baselines = planted
    conflicting = planted_split([0, 0, 1, 1], [1, 1, 0, 0], noise_seed=3)
    agreeing = planted_split([1, 1, 0], [1, 1, 0], noise_seed=4)
    selection = SpuriousSplit(torch.cat([agreeing.images[:2], conflicting.images,
                                         agreeing.images[2:]]),
                              torch.cat([agreeing.labels[:2], conflicting.labels,
                                         agreeing.labels[2:]]),
                              torch.cat([agreeing.spurious[:2], conflicting.spurious,
                                         agreeing.spurious[2:]]))
    seen = {}
    for name in ("activation_difference_scores", "attribution_feature_scores"):
        real = getattr(experiment, name)

        def spy(model, saes, split, real=real, name=name, **kwargs):
            seen[name] = split
            return real(model, saes, split, **kwargs)

        monkeypatch.setattr(experiment, name, spy)
    select_ablations(model, saes, selection=selection, validation=planted_split([0, 1], [0, 1]),
                     baselines=baselines,
                     config=experiment.DebiasConfig(counts=(1,), batch_size=8))
    assert torch.equal(seen["attribution_feature_scores"].images, conflicting.images)
    assert torch.equal(seen["attribution_feature_scores"].spurious, conflicting.spurious)
    assert torch.equal(seen["activation_difference_scores"].images, selection.images)


def test_neuron_attribution_known_answer_per_dimension(planted):
    """Gradient x (x - 0) of the cue class's adjusted logit, summed over tokens, mean over images.

    The cue class's adjusted logit is +-(a + 2 m) / std(v) (std frozen; std(v)^2 = (a^2 + m^2) / 4,
    LayerNorm's biased variance), read through the mean over 4 tokens: the gradient per token of
    dimension d is head[d] / (4 std) with head = (1, 2, -1, -2, 0, ...) / 2. Images 1-2 (a = -1,
    m = 1, cue 1, std 1/sqrt 2): dim 1 gives 4 (1 / (4 std)) m = sqrt 2, dim 0 gives
    4 (1 / (8 std)) a = -sqrt(2) / 2. Images 3-4 (a = 1, m = 0, cue 0, sign -1, std 1/2): dim 1
    gives 0, dim 0 gives -1. Means: dims 1 and 3 sqrt(2) / 2, dims 0 and 2 -(sqrt(2) + 2) / 4.
    """
    model, saes, baselines = planted
    conflicting = planted_split([0, 0, 1, 1], [1, 1, 0, 0], noise_seed=3)
    scores = neuron_attribution_scores(model, [HOOK], conflicting, baselines=baselines)[HOOK]
    r = math.sqrt(2)
    expected = torch.tensor([-(r + 2) / 4, r / 2, -(r + 2) / 4, r / 2, 0, 0, 0, 0])
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-4)  # LayerNorm eps 1e-5


def test_rank_units_ties_signs_and_top_ablation_known_answer():
    scores = {"a": torch.tensor([0.5, 0.0, -1.0, 0.5]), "b": torch.tensor([0.5, 2.0, -0.1])}
    ranking = rank_units(scores)
    # 2.0 first; the three 0.5 ties by lower layer, then lower index; 0 and negatives dropped.
    assert list(zip(ranking.hook.tolist(), ranking.index.tolist(), strict=True)) == \
        [(1, 1), (0, 0), (0, 3), (1, 0)]
    assert ranking.score.tolist() == [2.0, 0.5, 0.5, 0.5]
    assert top_ablation(ranking, 3, kind="feature").as_lists() == {"a": [0, 3], "b": [1]}
    assert top_ablation(ranking, 0, kind="feature").size == 0
    with pytest.raises(ValueError, match="NaN or inf"):
        rank_units({"a": torch.tensor([1.0, float("nan")])})


def test_circuit_edge_scores_sum_only_the_kept_out_edges():
    """Hand graph (tests/attribution/hand_graphs.py): block-0 latent 1 has out-edges 0.5, 0,
    0.25 to block-1 latents 0, 2, 5; latent 4 has -0.25, 0, 0; the top latents' logit edges are
    their scores 1, -0.5, 2. Pruned by hand: latent 4 and top latent 2 dropped, only the edge
    1 -> 0 kept, and top latent 5 kept without its logit edge."""
    from rrm_plugin.circuits.influence import PruneResult
    from rrm_plugin.debias.scoring import kept_out_edges
    from tests.attribution.hand_graphs import feature_hand_graph

    graph = feature_hand_graph()
    nodes = [torch.tensor([True, False, True]), torch.tensor([True, False, True, True])]
    edges = torch.zeros(3, 3, dtype=torch.bool)
    edges[0, 0] = True
    logit = torch.tensor([True, False, False, True])
    low, top = kept_out_edges(graph, PruneResult(nodes, [edges], logit, []))
    assert low.tolist() == [0.5, 0.0] and top.tolist() == [1.0, 0.0, 0.0]
    # Nothing pruned: the summed out-edges are the node scores (r_i = sum_o A(i -> o)).
    everything = PruneResult([torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool)],
                             [torch.ones(3, 3, dtype=torch.bool)], torch.ones(4, dtype=torch.bool),
                             [])
    low, top = kept_out_edges(graph, everything)
    assert low.tolist() == [0.75, -0.25] and top.tolist() == [1.0, -0.5, 2.0]


def test_out_edges_sum_to_node_scores_on_a_real_graph(tiny_vit, tiny_saes, tiny_images):
    """The premise of the edge score: on an attribution graph of a real (tiny) model, a latent's
    out-edges sum to its node score, so with nothing pruned the edge score is the plain one."""
    from rrm_plugin.attribution.baselines import compute_baselines
    from rrm_plugin.attribution.build import attribute
    from rrm_plugin.circuits.influence import PruneResult
    from rrm_plugin.debias.scoring import kept_out_edges

    baselines = compute_baselines(tiny_vit, tiny_saes, tiny_images, progress=False)
    (graph,) = attribute(tiny_vit, tiny_saes, tiny_images[:1], baselines=baselines, classes=[1])
    ones = [torch.ones(len(layer) + 1, dtype=torch.bool) for layer in graph.layers]
    everything = PruneResult(ones, [torch.ones_like(e, dtype=torch.bool) for e in graph.edges],
                             ones[-1], [])
    assert len(graph.layers) >= 2 and all(len(layer) for layer in graph.layers)
    for layer, summed in zip(graph.layers, kept_out_edges(graph, everything), strict=True):
        torch.testing.assert_close(summed, layer.scores.double(), rtol=1e-4, atol=1e-6)


def test_each_attribution_method_ranks_by_its_own_score(planted, monkeypatch):
    """Circuit nodes, circuit edges and the full graph reach their own methods' rankings."""
    from rrm_plugin.debias.scoring import AttributionScores

    model, saes, baselines = planted
    one_hot = {k: {HOOK: torch.eye(6, dtype=torch.float64)[k]} for k in range(6)}
    monkeypatch.setattr(experiment, "attribution_feature_scores",
                        lambda *a, **k: AttributionScores(circuit=one_hot[0], edges=one_hot[2],
                                                          full=one_hot[3]))
    ranked = {}

    def spy(model, ranking, validation, *, method, **kwargs):
        ranked[method] = ranking.index.tolist()
        return experiment.Selection(method, top_ablation(ranking, 1, kind=kwargs["kind"]), {})

    monkeypatch.setattr(experiment, "choose_count", spy)
    select_ablations(model, saes, selection=planted_split([0, 0, 1], [1, 0, 0]),
                     validation=planted_split([0, 1], [0, 1]), baselines=baselines,
                     config=experiment.DebiasConfig(counts=(1,), batch_size=8))
    assert ranked[experiment.RRM] == [0]
    assert ranked[experiment.EDGES] == [2]
    assert ranked[experiment.PLAIN] == [3]
