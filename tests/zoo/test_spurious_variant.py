"""The shipped stroke-hue variant (`rrm debias --variant stroke`): its models and release load
with checked shapes and provenance, and the biased model meets the recipe rule of
docs/debias.md on validation renders (relies on the cue, still knows the digit) while the
balanced reference does not rely on it."""

import pytest
import torch

from rrm_plugin.data.spurious import spurious_validation_set
from rrm_plugin.debias.ablation import predict
from rrm_plugin.zoo.models import load_model
from rrm_plugin.zoo.spurious import VARIANTS, variant, variant_of_model

STROKE = VARIANTS["stroke"]


def _agree_conflict(model_name: str) -> tuple[float, float]:
    split = spurious_validation_set(STROKE.config)
    correct = predict(load_model(model_name), split.images) == split.labels
    return float(correct[split.agrees].float().mean()), float(correct[~split.agrees].float().mean())


def test_stroke_models_meet_the_recipe_rule_on_validation():
    agree, conflict = _agree_conflict(STROKE.model)
    assert agree - conflict >= 0.10 and conflict >= 0.50, (agree, conflict)
    agree, conflict = _agree_conflict(STROKE.reference_model)
    assert agree - conflict < 0.10, (agree, conflict)


def test_stroke_release_fits_its_model():
    from rrm_plugin.workflows.workspace import load_workspace

    ws = load_workspace(model=None, release=STROKE.release)
    assert ws.model_name == STROKE.model
    assert [s.cfg.d_sae for s in ws.saes.values()] == [128, 256, 256]
    assert all(s.cfg.d_in == 64 for s in ws.saes.values())


def test_variant_lookup_names_what_exists():
    assert variant_of_model("digits-vit-stroke-balanced") == "stroke"
    assert variant("marker").model == "digits-vit-spurious"
    with pytest.raises(ValueError, match=r"unknown debiasing variant 'x'; expected one of "
                                         r"\['marker', 'stroke'\]"):
        variant("x")
    with pytest.raises(ValueError, match="'digits-vit' is not a debiasing model"):
        variant_of_model("digits-vit")
    assert torch.equal(spurious_validation_set(STROKE.config).labels,
                       spurious_validation_set(VARIANTS["marker"].config).labels)
