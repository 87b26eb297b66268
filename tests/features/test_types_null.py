"""The feature types' null: random latents inside a copy of the SAE, read by its own encode."""

import math

import pytest
import torch

from rrm_plugin.features.types_null import (
    random_latent_activations,
    read_latents,
    sae_with_random_latents,
)
from rrm_plugin.saes.training import new_topk_sae


def hand_sae(*, k: int = 1):
    """d_in 4, 3 latents: 2 e0, 2 e1 and e2 (the one the tests replace), layer-norm input."""
    sae = new_topk_sae(d_in=4, d_sae=3, k=k, hook_name="blocks.0.hook_resid_post",
                       model_name="hand")
    w = torch.zeros(4, 3)
    w[0, 0], w[1, 1], w[2, 2] = 2.0, 2.0, 1.0
    with torch.no_grad():
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(torch.eye(4)[:3])
    return sae


def test_random_latent_competes_in_topk_on_the_standardised_input():
    sae = hand_sae(k=1)
    before = {n: p.detach().clone() for n, p in sae.state_dict().items()}
    d = torch.tensor([[1.0], [0.0], [0.0], [1.0]]) / math.sqrt(2)
    # Token 0 standardises to [1.5, -.5, -.5, -.5] (mean 0, unbiased std 2): latent 0 reads 3,
    # the random latent (e0 + e3) / sqrt 2 reads 1 / sqrt 2 and loses the single TopK place.
    # Token 1 standardises to [-.5, -.5, -.5, 1.5]: latents 0, 1 read -1, the random one wins.
    x = torch.tensor([[3.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, 3.0]])
    work = sae_with_random_latents(sae, directions=d, slots=torch.tensor([2]))
    got = read_latents(work, x, torch.tensor([2]))[:, 0]
    # eps: SAELens standardises by (std + 1e-5), a relative change of 5e-6 of the reading.
    assert got.tolist() == pytest.approx([0.0, 1 / math.sqrt(2)], rel=1e-4, abs=1e-6)
    # Per-token standardisation: scaling and shifting the input changes nothing.
    assert torch.allclose(read_latents(work, 10 * x + 3, torch.tensor([2]))[:, 0], got,
                          atol=1e-5)
    # The replaced latent keeps its encoder norm: replacing latent 0 (norm 2) doubles the reading.
    work0 = sae_with_random_latents(sae, directions=d, slots=torch.tensor([0]))
    assert read_latents(work0, x[1:], torch.tensor([0]))[0, 0] == pytest.approx(
        2 / math.sqrt(2), rel=1e-4)
    # The real SAE is left as it was.
    assert all(torch.equal(before[n], p) for n, p in sae.state_dict().items())


def test_random_latent_with_k_covering_all_is_relu_of_its_projection():
    sae = hand_sae(k=3)
    d = torch.tensor([[1.0], [0.0], [0.0], [1.0]]) / math.sqrt(2)
    x = torch.tensor([[3.0, -1.0, -1.0, -1.0], [-1.0, -1.0, 3.0, -1.0]])
    work = sae_with_random_latents(sae, directions=d, slots=torch.tensor([2]))
    got = read_latents(work, x, torch.tensor([2]))[:, 0]
    # No competition left: token 0 reads 1 / sqrt 2, token 1 (-.5 - .5) / sqrt 2 < 0 reads 0.
    assert got.tolist() == pytest.approx([1 / math.sqrt(2), 0.0], rel=1e-4, abs=1e-6)


def test_bad_slots_and_directions_are_refused():
    sae = hand_sae()
    with pytest.raises(ValueError, match="directions must be"):
        sae_with_random_latents(sae, directions=torch.ones(3, 1), slots=torch.tensor([0]))
    with pytest.raises(ValueError, match="distinct latent indices"):
        sae_with_random_latents(sae, directions=torch.ones(4, 2), slots=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="distinct latent indices"):
        sae_with_random_latents(sae, directions=torch.ones(4, 1), slots=torch.tensor([3]))


def test_random_latent_activations_go_through_the_sae_encode(monkeypatch):
    sae = new_topk_sae(d_in=8, d_sae=32, k=4, hook_name="blocks.0.hook_resid_post",
                       model_name="hand", seed=1)
    calls = []
    original = type(sae).encode

    def counting_encode(self, x):
        calls.append(self is sae)
        return original(self, x)

    monkeypatch.setattr(type(sae), "encode", counting_encode)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 8, generator=g)
    inputs = {"a": x, "b": 4 * x - 1}
    acts = random_latent_activations(sae, inputs, n_random=5,
                                     generator=torch.Generator().manual_seed(1))
    # d_sae 32 -> 2 random latents per copy, 3 copies, each encoding both inputs; never the
    # real SAE itself (a copy).
    assert len(calls) == 3 * 2 and not any(calls)
    assert acts["a"].shape == (5, 7, 5)
    # TopK: at most k of the copy's latents fire, so a random latent fires on few tokens, and
    # the standardisation makes the affine-transformed input read the same.
    # (SAELens divides by std + 1e-5: a relative change of about 1e-5 between the two.)
    assert torch.allclose(acts["a"], acts["b"], rtol=1e-4, atol=1e-6)
    assert (acts["a"] > 0).float().mean() < 0.5 and (acts["a"] > 0).any()
