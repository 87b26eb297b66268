"""`run_circuits_on_image`: every circuit's insertion and deletion as rows of batched forwards,
against each circuit run alone through plain host hooks (the intervention written out here:
latents outside the kept set at baseline, errors at their clean value or baseline)."""

import pytest
import torch

from rrm_plugin.circuits.circuit import Circuit, clean_errors, run_circuits
from rrm_plugin.circuits.image_runs import run_circuits_on_image
from rrm_plugin.errors import RRMUserError
from rrm_plugin.replacement.splice import splice_saes


def random_circuits(saes, n: int, *, n_tokens: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    circuits = []
    for i in range(n):
        density = (i + 1) / (n + 1)
        latents = [torch.rand(*(() if n_tokens is None else (n_tokens,)), sae.cfg.d_sae,
                              generator=g) < density for sae in saes.values()]
        errors = torch.rand(len(saes), generator=g) < 0.5
        circuits.append(Circuit(list(saes), latents, errors))
    return circuits


def by_hand(vit, saes, image, circuit, baselines, *, delete: bool):
    """One circuit alone: host hooks on the spliced model's latents and errors."""
    true = clean_errors(vit, saes, image[None])
    hooks = []
    for k, h in enumerate(saes):
        keep = circuit.latents[k] ^ delete
        keep_error = bool(circuit.errors[k]) ^ delete
        hooks += [(f"{h}.hook_sae_acts_post",
                   lambda z, hook, m=keep, b=baselines.features[h]: torch.where(m, z, b)),
                  (f"{h}.hook_sae_error",
                   lambda e, hook, t=true[h], b=baselines.errors[h], m=keep_error:
                   (t if m else b).expand_as(e))]
    with torch.no_grad(), splice_saes(vit, saes, keep_error=True):
        return vit.run_with_hooks(image[None], fwd_hooks=hooks)[0]


@pytest.mark.parametrize("token_masks", [False, True])
def test_rows_equal_each_circuit_run_alone(vit, saes, images, baselines, token_masks):
    image = images[0]
    n_tokens = clean_errors(vit, saes, image[None])[next(iter(saes))].shape[1]
    circuits = random_circuits(saes, 7, n_tokens=n_tokens if token_masks else None)
    # Batches of 3 rows: a batch mixes insertions and deletions and the last one is partial.
    got = run_circuits_on_image(vit, saes, image, circuits, baselines=baselines, batch_size=3)
    assert got.insertion.shape == got.deletion.shape == (7, vit.cfg.n_classes)
    for i, circuit in enumerate(circuits):
        for delete, rows in ((False, got.insertion), (True, got.deletion)):
            want = by_hand(vit, saes, image, circuit, baselines, delete=delete)
            # float32 rows of a batched matmul vs a batch of one: the same products summed in
            # another order, logits of size ~1-10: a few ulp (1e-6 relative) apart at most.
            torch.testing.assert_close(rows[i], want, rtol=1e-5, atol=1e-5)
            # The old path: one circuit, one mode per call.
            mode = "deletion" if delete else "insertion"
            alone = run_circuits(vit, saes, image[None], circuit, baselines=baselines,
                                 mode=mode)[0]
            torch.testing.assert_close(rows[i], alone, rtol=1e-5, atol=1e-5)
    # The circuits differ, and so do their readouts (no row repeated or swapped).
    assert len({tuple(r.tolist()) for r in got.insertion}) == 7
    assert not torch.allclose(got.insertion, got.deletion)


def test_bad_inputs_are_refused_before_any_forward(vit, saes, images, baselines):
    circuits = random_circuits(saes, 2)
    with pytest.raises(RRMUserError, match="at least one circuit"):
        run_circuits_on_image(vit, saes, images[0], [], baselines=baselines)
    with pytest.raises(RRMUserError, match="one image"):
        run_circuits_on_image(vit, saes, images[:1], circuits, baselines=baselines)
    with pytest.raises(RRMUserError, match="batch_size"):
        run_circuits_on_image(vit, saes, images[0], circuits, baselines=baselines, batch_size=0)
    wrong = Circuit(list(saes), [torch.zeros(5, dtype=torch.bool)] * len(saes),
                    torch.zeros(len(saes), dtype=torch.bool))
    with pytest.raises(RRMUserError, match="built for other SAEs"):
        run_circuits_on_image(vit, saes, images[0], [circuits[0], wrong], baselines=baselines)


def test_deletion_rows_can_be_skipped_and_errors_given(vit, saes, images, baselines):
    image = images[0]
    circuits = random_circuits(saes, 3)
    full = run_circuits_on_image(vit, saes, image, circuits, baselines=baselines)
    errors = clean_errors(vit, saes, image[None])
    part = run_circuits_on_image(vit, saes, image, circuits, baselines=baselines,
                                 deletion=[False, True, True], errors=errors, batch_size=2)
    torch.testing.assert_close(part.insertion, full.insertion, rtol=1e-5, atol=1e-5)
    assert torch.isnan(part.deletion[0]).all()  # not run
    torch.testing.assert_close(part.deletion[1:], full.deletion[1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(RRMUserError, match="deletion has 2 entries for 3 circuits"):
        run_circuits_on_image(vit, saes, image, circuits, baselines=baselines,
                              deletion=[True, False])
    missing = dict(list(errors.items())[1:])
    with pytest.raises(RRMUserError, match="errors cover"):
        run_circuits_on_image(vit, saes, image, circuits, baselines=baselines, errors=missing)
