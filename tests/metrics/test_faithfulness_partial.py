"""Faithfulness curves at partial sweep points against the independent oracle of
tests/circuits/partial_oracle.py.

The circuits a run evaluates are recorded as they are drawn (a spy around `method_masks` that
returns them unchanged); every recorded point's logit is then recomputed by the oracle: kept
latents at their value, removed ones at their baseline, kept error nodes at the clean run's
error, removed ones at their baseline, skipped layers untouched. float64 on both paths, so 1e-9
bounds the rounding of sums taken in different orders; the run stores its curves in float32,
so those are compared to float32 precision (RTOL).
"""

import pytest
import torch

import rrm_plugin.metrics.faithfulness as faithfulness
from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.metrics.faithfulness import (
    FaithfulnessConfig,
    evaluate_faithfulness,
    method_scores,
    sae_layout,
)
from tests.circuits.partial_oracle import HOOKS, oracle_logits, partial_setup
from tests.circuits.test_partial_circuits import graph_masks

ATOL = 1e-9  # float64 on both paths
RTOL = 1e-6  # the run's curves are stored as float32 (eps 1.2e-7)
SWEEP = (0.0, 0.2, 0.5, 1.0)
BATCH = 2


@pytest.fixture(scope="module")
def setup():
    return partial_setup()


def neuron_oracle(model, images, masks, mode, resid):
    """Residual dimensions in the circuit kept (insertion) or set to their baseline."""
    hooks = [(h, lambda x, hook, m=m, h=h: torch.where(
        (m if mode == "insertion" else ~m)[:, None, :], x, resid[h])) for h, m in masks.items()]
    with torch.no_grad():
        return model.run_with_hooks(images, fwd_hooks=hooks)


@pytest.mark.parametrize("skip", [0, 1])
def test_partial_sweep_points_are_the_oracles(setup, skip, monkeypatch):
    model, saes, baselines, images = setup
    labels = model(images).argmax(-1).detach()  # every image correct: all are used, in order
    recorded = []
    real = faithfulness.method_masks

    def spy(*args, **kwargs):
        masks = real(*args, **kwargs)
        recorded.append(masks)
        return masks

    monkeypatch.setattr(faithfulness, "method_masks", spy)
    methods = ("rrm", "random", "random_authors", "neuron")
    config = FaithfulnessConfig(sweep=SWEEP, methods=methods, batch_size=BATCH,
                                skip_early_layers=skip)
    result = evaluate_faithfulness(model, saes, images, labels, baselines=baselines,
                                   config=config, progress=False)
    assert len(recorded) == len(SWEEP) * len(images) // BATCH
    masked = HOOKS[skip:]
    n_pos = baselines.features[HOOKS[0]].shape[0]
    mixed_errors = set()
    for i, masks in enumerate(recorded):
        b, j = divmod(i, len(SWEEP))
        part = slice(b * BATCH, (b + 1) * BATCH)
        x = images[part]
        for method in methods:
            layers = masks[method][skip:]
            count = sum(m.sum(-1) for m in layers).double()
            assert torch.equal(torch.as_tensor(
                result.image_curves[method]["insertion"]["node_count"][part, j]), count)
            for mode in ("insertion", "deletion"):
                if method == "neuron":
                    logits = neuron_oracle(model, x, dict(zip(masked, layers, strict=True)),
                                           mode, baselines.resid)
                else:
                    errors = {h: m[:, -1] for h, m in zip(masked, layers, strict=True)}
                    mixed_errors |= {bool(e) for m in errors.values() for e in m}
                    logits = oracle_logits(
                        model, saes, x, mode=mode, base_z=baselines.features,
                        base_e=baselines.errors, errors=errors,
                        latents={h: m[:, None, :-1].expand(-1, n_pos, -1)
                                 for h, m in zip(masked, layers, strict=True)})
                chosen = logits.gather(-1, labels[part, None])[:, 0]
                curves = result.image_curves[method][mode]
                torch.testing.assert_close(torch.as_tensor(curves["logit"][part, j]), chosen,
                                           atol=ATOL, rtol=RTOL)
                torch.testing.assert_close(torch.as_tensor(curves["adjusted_logit"][part, j]),
                                           chosen - logits.mean(-1), atol=ATOL, rtol=RTOL)
    assert mixed_errors == {True, False}  # some error nodes kept, some removed


def test_influence_pruned_circuits_readouts_are_the_oracles(setup):
    """The `influence_circuit` readouts (rrm_edge runs): each image's influence-pruned circuit,
    inserted and deleted."""
    model, saes, baselines, images = setup
    labels = model(images).argmax(-1).detach()
    config = FaithfulnessConfig(sweep=SWEEP, methods=("rrm_edge",))
    layout = sae_layout(saes)
    stats: dict[str, list[float]] = {}
    scores = method_scores(model, saes, images, labels, baselines=baselines, config=config,
                           layout=layout, influence=stats)
    n_pos = baselines.features[HOOKS[0]].shape[0]
    by_hand = [graph_masks(g, prune_by_influence(g).node_masks, n_pos) for g in scores["graphs"]]
    latents = {h: torch.stack([lat[k] for lat, _ in by_hand]) for k, h in enumerate(HOOKS)}
    errors = {h: torch.tensor([bool(e[k]) for _, e in by_hand]) for k, h in enumerate(HOOKS)}
    assert sum(int(m.sum()) for m in latents.values()) > 0
    for mode in ("insertion", "deletion"):
        logits = oracle_logits(model, saes, images, latents=latents, errors=errors, mode=mode,
                               base_z=baselines.features, base_e=baselines.errors)
        chosen = logits.gather(-1, labels[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(stats[f"{mode}_adjusted_logit"],
                                                dtype=torch.float64),
                                   chosen - logits.mean(-1), atol=ATOL, rtol=0)
