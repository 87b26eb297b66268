"""Partial circuits against the independent oracle of partial_oracle.py.

Some latents kept, some removed, the error node kept in some layers and removed in others, in
three layers, a different circuit per image: kept latents keep their (recomputed) value, removed
ones take their baseline, a kept error node the clean run's error and a removed one its baseline
(docs/method.md §5). Covers `run_circuits` (used by `trace_image` and the viewer) and the
readouts `trace_image` writes. Everything runs in float64: the library and the oracle compute the
same sums in different orders, so 1e-9 bounds rounding with room to spare.
"""

import json

import pytest
import torch

from rrm_plugin.attribution.build import attribute
from rrm_plugin.circuits.circuit import Circuit, run_circuits
from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.workflows.trace import TraceConfig, trace_image
from tests.circuits.partial_oracle import HOOKS, oracle_logits, partial_setup

ATOL = 1e-9  # float64 on both paths
MODES = ("insertion", "deletion")
# Error node per image and layer: every pattern of kept and removed errors appears.
ERROR_PATTERN = torch.tensor([[True, False, True], [False, True, False], [True, True, False],
                              [False, False, True]])


@pytest.fixture(scope="module")
def setup():
    return partial_setup()


def random_latent_masks(shape, *, seed, share=0.4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < share


def oracle(setup, latents, errors, mode, hooks=HOOKS):
    """Oracle logits of per-image `latents[k]` `[batch, pos or 1, d_sae]`, `errors` `[batch, k]`."""
    model, saes, baselines, images = setup
    n_pos = baselines.features[HOOKS[0]].shape[0]
    return oracle_logits(
        model, saes, images,
        latents={h: latents[k].expand(len(images), n_pos, -1) for k, h in enumerate(hooks)},
        errors={h: errors[:, k] for k, h in enumerate(hooks)}, mode=mode,
        base_z=baselines.features, base_e=baselines.errors)


def test_the_oracle_is_the_clean_model_when_everything_is_kept(setup):
    model, saes, _, images = setup
    everything = [torch.ones(len(images), 1, saes[h].cfg.d_sae, dtype=torch.bool) for h in HOOKS]
    got = oracle(setup, everything, torch.ones(len(images), 3, dtype=torch.bool), "insertion")
    torch.testing.assert_close(got, model(images).detach(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_partial_feature_circuits_per_image(setup, mode):
    model, saes, baselines, images = setup
    masks = [random_latent_masks((len(images), saes[h].cfg.d_sae), seed=k)
             for k, h in enumerate(HOOKS)]
    circuits = [Circuit(HOOKS, [m[b] for m in masks], ERROR_PATTERN[b])
                for b in range(len(images))]
    got = run_circuits(model, saes, images, circuits, baselines=baselines, mode=mode)
    expected = oracle(setup, [m[:, None] for m in masks], ERROR_PATTERN, mode)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # The circuits are really partial: they give neither the clean nor the all-baseline logits,
    # and each image's kept errors matter (with every error at its baseline the logits move).
    clean = model(images).detach()
    assert (got - clean).abs().amax(-1).min() > 1e-2
    errors_at_baseline = torch.full_like(ERROR_PATTERN, mode == "deletion")
    no_errors = oracle(setup, [m[:, None] for m in masks], errors_at_baseline, mode)
    assert (got - no_errors).abs().amax(-1).min() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_partial_token_circuits_per_image(setup, mode):
    model, saes, baselines, images = setup
    n_pos = baselines.features[HOOKS[0]].shape[0]
    masks = [random_latent_masks((len(images), n_pos, saes[h].cfg.d_sae), seed=10 + k)
             for k, h in enumerate(HOOKS)]
    circuits = [Circuit(HOOKS, [m[b] for m in masks], ERROR_PATTERN[b])
                for b in range(len(images))]
    got = run_circuits(model, saes, images, circuits, baselines=baselines, mode=mode)
    torch.testing.assert_close(got, oracle(setup, masks, ERROR_PATTERN, mode), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_a_circuit_over_some_layers_leaves_the_others_exact(setup, mode):
    """Layers 0 and 2 masked; layer 1 has no node in the circuit and runs as in the clean model."""
    model, saes, baselines, images = setup
    hooks = [HOOKS[0], HOOKS[2]]
    masks = [random_latent_masks((saes[h].cfg.d_sae,), seed=20 + k) for k, h in enumerate(hooks)]
    errors = torch.tensor([False, True])
    got = run_circuits(model, saes, images, Circuit(hooks, masks, errors), baselines=baselines,
                       mode=mode)
    expected = oracle(setup, [m.expand(len(images), 1, -1) for m in masks],
                      errors.expand(len(images), 2), mode, hooks=hooks)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def graph_masks(graph, node_masks, n_pos):
    """Oracle masks of a graph's selected nodes, read from its layers (error node last)."""
    latents, errors = [], []
    for layer, mask in zip(graph.layers, node_masks, strict=True):
        dense = torch.zeros(n_pos, layer.d_sae, dtype=torch.bool)
        for i in torch.nonzero(mask[:-1])[:, 0].tolist():
            f = int(layer.features[i])
            if layer.tokens is None:
                dense[:, f] = True
            else:
                dense[int(layer.tokens[i]), f] = True
        latents.append(dense)
        errors.append(bool(mask[-1]))
    return latents, torch.tensor(errors)


@pytest.mark.parametrize("granularity", ["feature", "token"])
def test_circuits_of_pruned_graphs(setup, granularity):
    """Circuits as `Circuit.from_graph` builds them from pruned graphs, one per image."""
    model, saes, baselines, images = setup
    n_pos = baselines.features[HOOKS[0]].shape[0]
    graphs = attribute(model, saes, images, baselines=baselines, granularity=granularity)
    pruned = [prune_by_influence(g, node_threshold=0.5, edge_threshold=0.9).node_masks
              for g in graphs]
    # Mixed error nodes, whatever the pruning kept: the pattern decides the error slots.
    pruned = [[torch.cat([m[:-1], ERROR_PATTERN[b, k:k + 1]]) for k, m in enumerate(masks)]
              for b, masks in enumerate(pruned)]
    circuits = [Circuit.from_graph(g, m) for g, m in zip(graphs, pruned, strict=True)]
    by_hand = [graph_masks(g, m, n_pos) for g, m in zip(graphs, pruned, strict=True)]
    latents = [torch.stack([lat[k] for lat, _ in by_hand]) for k in range(3)]
    errors = torch.stack([e for _, e in by_hand])
    assert sum(int(m[:-1].sum()) for m in pruned[0]) > 0
    for mode in MODES:
        got = run_circuits(model, saes, images, circuits, baselines=baselines, mode=mode)
        torch.testing.assert_close(got, oracle(setup, latents, errors, mode), atol=ATOL, rtol=0)


def circuit_masks_from_json(data, saes, n_pos):
    latents, errors = [], []
    for layer in data["layers"]:
        dense = torch.zeros(n_pos, saes[layer["hook_name"]].cfg.d_sae, dtype=torch.bool)
        if "features" in layer:
            dense[:, layer["features"]] = True
        for t, f in layer.get("nodes", []):
            dense[t, f] = True
        latents.append(dense[None])
        errors.append(layer["error"])
    return latents, torch.tensor([errors])


@pytest.mark.parametrize("granularity", ["feature", "token"])
def test_trace_readouts_are_the_oracles(setup, granularity, tmp_path):
    """`trace_image`'s insertion and deletion readouts of the circuit it wrote."""
    model, saes, baselines, images = setup
    config = TraceConfig(target_class=2, granularity=granularity, node_threshold=0.5,
                         edge_threshold=0.9, viewer=False)
    summary = trace_image(model, saes, images[1], baselines=baselines, out_dir=tmp_path,
                          reference_images=images, config=config)
    data = json.loads((tmp_path / "circuit.json").read_text())
    n_pos = baselines.features[HOOKS[0]].shape[0]
    latents, errors = circuit_masks_from_json(data, saes, n_pos)
    assert sum(int(m.sum()) for m in latents) > 0
    one = (model, saes, baselines, images[1:2])
    for mode in MODES:
        logits = oracle(one, latents, errors, mode)[0]
        assert summary[mode]["logit"] == pytest.approx(float(logits[2]), abs=ATOL)
        assert summary[mode]["adjusted_logit"] == pytest.approx(
            float(logits[2] - logits.mean()), abs=ATOL)
