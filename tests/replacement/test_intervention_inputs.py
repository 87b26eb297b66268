"""Feature interventions refuse values that would silently give NaN or wrong results."""

import math

import pytest
import torch

import rrm_plugin
from rrm_plugin import FeatureIntervention, intervention_hooks

HOOK = "blocks.0.hook_resid_post"


@pytest.mark.parametrize("kwargs", [{"scale": math.nan}, {"scale": math.inf},
                                    {"value": -math.inf}, {"value": float("nan")}])
def test_non_finite_values_are_refused(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name}= must be finite"):
        FeatureIntervention(HOOK, features=[0], **kwargs)


@pytest.mark.parametrize("kwargs", [{"features": [1.5]}, {"features": "3"},
                                    {"features": [True]}, {"features": [0], "tokens": [0.0]}])
def test_non_integer_indices_are_refused(kwargs):
    with pytest.raises(TypeError, match="must be integer indices"):
        FeatureIntervention(HOOK, scale=0.0, **kwargs)


def test_string_scale_is_refused():
    with pytest.raises(TypeError, match="scale= must be a number"):
        FeatureIntervention(HOOK, features=[0], scale="0")


def test_interventions_outside_replacement_say_what_is_missing(tiny_vit, tiny_saes, tiny_images):
    edit = FeatureIntervention(HOOK, features=[1], scale=0.0)
    with pytest.raises(KeyError, match=r"no SAE is spliced at \['blocks.0.hook_resid_post'\]"):
        intervention_hooks([edit], model=tiny_vit)
    with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=True):
        hooks = intervention_hooks([edit], model=tiny_vit)
        edited = tiny_vit.run_with_hooks(tiny_images, fwd_hooks=hooks)
    assert torch.isfinite(edited).all()
