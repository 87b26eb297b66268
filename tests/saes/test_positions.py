"""`sae_positions`: SAELens's `seqpos_slice` as a token slice, checked."""

import re

import pytest
import torch

from rrm_plugin.saes.positions import covers_every_position, position_mask, sae_positions
from rrm_plugin.saes.training import new_topk_sae


def _sae(seqpos):
    sae = new_topk_sae(d_in=4, d_sae=8, k=2, hook_name="blocks.0.hook_resid_post",
                       model_name="m")
    sae.cfg.metadata.seqpos_slice = seqpos
    return sae


@pytest.mark.parametrize(("seqpos", "expected"), [
    (None, slice(None)),
    ((None,), slice(None)),
    ([None], slice(None)),
    ((3,), slice(3)),  # one argument: the stop, as for `slice(3)`
    ((0, 1), slice(0, 1)),
    ((1, None), slice(1, None)),
    ((0, None, 1), slice(0, None, 1)),
    ((1, None, 2), slice(1, None, 2)),
])
def test_seqpos_slice_is_a_python_slice(seqpos, expected):
    assert sae_positions(_sae(seqpos)) == expected


@pytest.mark.parametrize("seqpos", [5, (), (0, 1, 1, 1), ("0", 1), (0, 1.0), [None, "a"]])
def test_bad_seqpos_slice_is_named(seqpos):
    message = (f"SAE at 'blocks.0.hook_resid_post' has seqpos_slice={seqpos!r}; expected a "
               "tuple of 1 to 3 ints or None, e.g. (0, 1)")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sae_positions(_sae(seqpos))


@pytest.mark.parametrize("step", [0, -1])
def test_non_positive_step_is_refused(step):
    with pytest.raises(ValueError, match=r"^SAE at 'blocks.0.hook_resid_post': seqpos_slice "
                                         r"step must be > 0$"):
        sae_positions(_sae((0, None, step)))


def test_covers_every_position_and_mask():
    assert covers_every_position(_sae(None)) and covers_every_position(_sae((None,)))
    assert not covers_every_position(_sae((0, 1))) and not covers_every_position(_sae((1, None)))
    assert position_mask(_sae((1, None, 2)), 6).tolist() == [False, True, False, True, False, True]
    assert position_mask(_sae((0, 1)), 3).tolist() == [True, False, False]
    assert position_mask(_sae(None), 2).dtype == torch.bool
    assert position_mask(_sae((0, 1)), 3, device="meta").is_meta
