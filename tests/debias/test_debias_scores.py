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
from rrm_plugin.debias.scoring import activation_difference_scores, neuron_attribution_scores
from rrm_plugin.debias.selection import rank_units, top_ablation
from tests.debias.conftest import HOOK, planted_images, planted_split

U = 4 * math.sqrt(2)
# Three cue values with unequal group sizes (2, 1, 3): no flip of the sign or of the reference
# set leaves the answer unchanged.
CUES = torch.tensor([0, 0, 1, 2, 2, 2])
LABELS = torch.tensor([1, 1, 0, 0, 1, 0])
MARKER = torch.tensor([3.0, 1.0, -1.0, 2.0, 0.0, 1.0])
DIGIT = torch.tensor([0.0, 1.0, -2.0, 0.0, 3.0, -1.0])


def three_cue_split() -> SpuriousSplit:
    images = planted_images(LABELS, MARKER, evidence=DIGIT)
    return SpuriousSplit(images, LABELS, CUES)


def test_activation_difference_known_answer_with_three_cue_values(planted):
    """Per latent and cue value v: mean over images with cue v minus mean over the others.

    latent 0, activations (u) [3, 1, 0, 2, 0, 1]: v=0: 2 - 3/4 = 1.25; v=1: 0 - 7/5 = -1.4;
        v=2: 1 - 4/3 = -1/3; largest 1.25 (the sign flipped would give 1.4).
    latent 1, [0, 0, 1, 0, 0, 0]: -1/4, 1 - 0 = 1, -1/3 -> 1.
    latent 2, [0, 1, 0, 0, 3, 0]: 1/2 - 3/4, 0 - 4/5, 1 - 1/3 = 2/3 -> 2/3 (flipped: 0.8).
    latent 3, [0, 0, 2, 0, 0, 1]: 0 - 3/4, 2 - 1/5 = 1.8, 1/3 - 2/3 -> 1.8.
    """
    model, saes, _ = planted
    scores = activation_difference_scores(model, saes, three_cue_split())[HOOK]
    expected = torch.tensor([1.25, 1.0, 2 / 3, 1.8, 0.0, 0.0]) * U
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)  # float32 sums
    ranking = rank_units({HOOK: scores})
    assert ranking.index.tolist() == [3, 0, 1, 2]


def test_activation_difference_uses_the_cue_not_the_label(planted):
    """The same images with the cue and the label swapped score otherwise (by hand: latent 0,
    labels [1, 1, 0, 0, 1, 0]: v=0: 3/3 - 4/3 = -1/3, v=1: 4/3 - 1 = 1/3 -> 1/3)."""
    model, saes, _ = planted
    split = three_cue_split()
    swapped = SpuriousSplit(split.images, CUES, LABELS)
    scores = activation_difference_scores(model, saes, swapped)[HOOK]
    assert scores[0].item() == pytest.approx(U / 3, rel=1e-5)


def test_activation_difference_needs_two_cue_values(planted):
    model, saes, _ = planted
    split = three_cue_split()
    with pytest.raises(ValueError, match="at least two different cue values"):
        activation_difference_scores(model, saes, split._replace(spurious=torch.ones(6).long()))


def test_selection_scores_activation_difference_on_the_conflicting_images_only(
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
    seen = []
    real = experiment.activation_difference_scores

    def spy(model, saes, split, **kwargs):
        seen.append(split)
        return real(model, saes, split, **kwargs)

    monkeypatch.setattr(experiment, "activation_difference_scores", spy)
    select_ablations(model, saes, selection=selection, validation=planted_split([0, 1], [0, 1]),
                     baselines=baselines,
                     config=experiment.DebiasConfig(counts=(1,), batch_size=8))
    (split,) = seen
    assert torch.equal(split.images, conflicting.images)
    assert torch.equal(split.spurious, conflicting.spurious)


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
