"""`FeatureIntervention.apply` on hand-built activations: exact answers, index rules, messages."""

import pytest
import torch

from rrm_plugin import FeatureIntervention, intervention_hooks

HOOK = "blocks.0.hook_resid_post"


def _acts():
    return torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4) + 1  # [batch, pos, d_sae]


def test_set_and_scale_change_exactly_the_chosen_cells():
    acts = _acts()
    expected = acts.clone()
    for t in (0, 2):  # token -1 is position 2 of 3
        for f in (1, 3):
            expected[:, t, f] = -7.0
    got = FeatureIntervention(HOOK, features=[1, 3], tokens=[0, -1], value=-7.0).apply(acts)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    expected = acts.clone()
    expected[:, :, 2] *= 0.5  # tokens=None: every position
    got = FeatureIntervention(HOOK, features=[2], scale=0.5).apply(acts)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_most_negative_token_index_is_the_first_position():
    acts = _acts()
    expected = acts.clone()
    expected[:, 0, 0] = 0.0
    got = FeatureIntervention(HOOK, features=[0], tokens=[-3], value=0.0).apply(acts)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("tokens", [[3], [-4], [0, 3]])
def test_token_positions_out_of_range_are_named(tokens):
    iv = FeatureIntervention(HOOK, features=[0], tokens=tokens, value=1.0)
    message = rf"^token positions \[{', '.join(map(str, tokens))}\] out of range for 3 tokens$"
    with pytest.raises(IndexError, match=message):
        iv.apply(_acts())


def test_no_features_is_a_no_op():
    acts = _acts()
    got = FeatureIntervention(HOOK, features=[], value=5.0).apply(acts)
    torch.testing.assert_close(got, acts, atol=0, rtol=0)


def test_tokens_are_checked_whatever_features_is():
    with pytest.raises(TypeError, match=r"^FeatureIntervention tokens= must be integer indices"):
        FeatureIntervention(HOOK, features=None, tokens=[1.5], value=1.0)


@pytest.mark.parametrize("kwargs", [{}, {"value": 1.0, "scale": 2.0}])
def test_value_and_scale_message(kwargs):
    with pytest.raises(ValueError, match=r"^give exactly one of value= or scale=$"):
        FeatureIntervention(HOOK, features=[0], **kwargs)


def test_unspliced_hook_message_in_full(tiny_vit):
    edit = FeatureIntervention(HOOK, features=[1], scale=0.0)
    # UnknownNameError (a KeyError) prints its sentence without KeyError's quotes.
    message = (r"^no SAE is spliced at \['blocks.0.hook_resid_post'\]: run the interventions "
               r"inside `with rrm_plugin.splice_saes\(model, saes\):` with SAEs at those hooks$")
    with pytest.raises(KeyError, match=message):
        intervention_hooks([edit], model=tiny_vit)
