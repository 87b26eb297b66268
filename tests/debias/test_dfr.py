"""DFR (last-layer retraining on validation): group weights by hand, and a hand-built case where
balancing the groups is what removes the spurious feature."""

import pytest
import torch

from rrm_plugin.debias.dfr import fit_dfr, fit_head, group_weights, penultimate_features
from rrm_plugin.debias.evaluation import group_accuracy
from tests.debias.conftest import all_groups


def test_group_weights_known_answer():
    weights = group_weights(torch.tensor([3, 0, 0, 3, 0, 5]))
    # Three groups of sizes 3 (group 0), 2 (group 3), 1 (group 5): 1 / (3 * size).
    expected = torch.tensor([1 / 6, 1 / 9, 1 / 9, 1 / 6, 1 / 9, 1 / 3], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
    assert weights.sum().item() == pytest.approx(1.0)


def spurious_features(seed: int):
    """Binary task, 2 features: x0 the digit (label sign + noise of std 0.8), x1 the cue
    (exactly the label sign on the 190 agreeing images, the other sign on the 10 conflicting
    ones). Unweighted, x1 is the cheaper fit; group-balanced, x1 carries no information."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(200) % 2
    conflicting = torch.zeros(200, dtype=torch.bool)
    conflicting[:10] = True
    sign = 2.0 * labels - 1
    x0 = sign + 0.8 * torch.randn(200, generator=g, dtype=torch.float64)
    x1 = torch.where(conflicting, -sign, sign)
    groups = 2 * labels + conflicting.long()
    return torch.stack([x0, x1.double()], 1), labels, groups


@pytest.mark.parametrize("seed", [0, 1])
def test_group_balanced_head_stops_reading_the_cue(seed, monkeypatch):
    features, labels, groups = spurious_features(seed)
    test_features, test_labels, test_groups = spurious_features(100 + seed)

    def worst(head):
        correct = (head.logits(test_features).argmax(-1) == test_labels).float()
        return group_accuracy(correct, test_groups).worst_group

    head = fit_head(features, labels, groups, c=0.1, n_classes=2)
    # Balanced: the cue weighs less than the digit, and the conflicting groups are mostly right
    # (x0 alone: P(noise < 1 / 0.8) ~ 0.89 per image).
    assert abs(head.weight[1, 1]) < abs(head.weight[1, 0])
    assert worst(head) >= 0.6
    # Without the group weights (every image weight 1) the cue dominates and the conflicting
    # groups fall below 0.3: the margin that the weights must create.
    monkeypatch.setattr("rrm_plugin.debias.dfr.group_weights",
                        lambda g: torch.full((len(g),), 1.0 / len(g), dtype=torch.float64))
    unweighted = fit_head(features, labels, groups, c=0.1, n_classes=2)
    assert worst(unweighted) < 0.3


def test_fit_dfr_on_the_planted_model_chooses_c_on_validation(planted):
    """The planted model's head reads (a + 2 m) through the final LayerNorm; its penultimate
    features carry a and m separately, so a group-balanced head recovers the digit."""
    model, _, _ = planted
    validation = all_groups(8, noise_seed=1)
    head = fit_dfr(model, validation, cs=(1.0, 0.1), seed=0)
    assert set(head.validation) == {1.0, 0.1} and head.c in head.validation
    assert head.c == max(head.validation, key=lambda c: (head.validation[c], -c))
    test = all_groups(4, noise_seed=7)
    predicted = head.predict(model, test.images)
    assert predicted.tolist() == test.labels.tolist()  # the biased model fails class 0 + marker
    assert model(test.images).argmax(-1).tolist() != test.labels.tolist()
    feats = penultimate_features(model, test.images)
    assert feats.shape == (16, 8)
    with pytest.raises(ValueError, match="C values must be positive"):
        fit_dfr(model, validation, cs=(0.0,))
