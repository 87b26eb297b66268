"""Running circuits: insertion / deletion semantics through the replacement hook mode."""

import pytest
import torch

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.circuits.circuit import Circuit, run_circuits
from rrm_plugin.circuits.influence import prune_by_influence
from rrm_plugin.replacement.interventions import FeatureIntervention, intervention_hooks
from rrm_plugin.replacement.splice import splice_saes


def all_or_nothing(graph, keep: bool) -> Circuit:
    masks = [torch.full((len(layer) + 1,), keep) for layer in graph.layers]
    return Circuit.from_graph(graph, masks)


def baseline_model_logits(vit, saes, images, baselines):
    """Every latent and error at its baseline: x_l = s (z~ W_dec + b_dec) + mu + e~."""
    hooks = []
    for h in saes:
        base_z, base_e = baselines.features[h], baselines.errors[h]
        hooks += [(f"{h}.hook_sae_acts_post", lambda z, hook, b=base_z: b.expand_as(z)),
                  (f"{h}.hook_sae_error", lambda e, hook, b=base_e: b.expand_as(e))]
    with torch.no_grad(), splice_saes(vit, saes, keep_error=True):
        return vit.run_with_hooks(images, fwd_hooks=hooks)


def test_full_and_empty_circuits(vit, saes, images, mean_baselines):
    graphs = attribute(vit, saes, images, baselines=mean_baselines)
    full = [all_or_nothing(g, True) for g in graphs]
    empty = [all_or_nothing(g, False) for g in graphs]
    clean = vit(images).detach()
    at_baseline = baseline_model_logits(vit, saes, images, mean_baselines)
    assert (clean - at_baseline).abs().max() > 1e-2
    run = lambda c, mode: run_circuits(vit, saes, images, c, baselines=mean_baselines,  # noqa
                                       mode=mode)
    torch.testing.assert_close(run(full, "insertion"), clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(run(empty, "deletion"), clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(run(empty, "insertion"), at_baseline, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(full, "deletion"), at_baseline, atol=1e-5, rtol=1e-5)


def test_deleting_one_latent_equals_a_feature_intervention(vit, saes, images):
    h = "blocks.1.hook_resid_post"
    one = {h: saes[h]}
    zero = Baselines.zeros(one, n_tokens=5)
    with torch.no_grad(), splice_saes(vit, one, keep_error=True):
        acts = vit.run_with_cache(images, names_filter=f"{h}.hook_sae_acts_post")[1][
            f"{h}.hook_sae_acts_post"]
        feature = int(acts.sum((0, 1)).argmax())
        edit = FeatureIntervention(h, features=[feature], value=0.0)
        expected = vit.run_with_hooks(images, fwd_hooks=intervention_hooks([edit]))
    mask = torch.zeros(32, dtype=torch.bool)
    mask[feature] = True
    circuit = Circuit([h], [mask], torch.tensor([False]))
    got = run_circuits(vit, one, images, circuit, baselines=zero, mode="deletion")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - vit(images)).abs().max() > 1e-4


def test_error_node_keeps_its_clean_value_only_when_selected(vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    latents_only = [torch.cat([torch.ones(len(layer), dtype=torch.bool), torch.tensor([False])])
                    for layer in graph.layers]
    with_errors = [torch.ones(len(layer) + 1, dtype=torch.bool) for layer in graph.layers]
    a = run_circuits(vit, saes, images[:1], Circuit.from_graph(graph, latents_only),
                     baselines=baselines)
    b = run_circuits(vit, saes, images[:1], Circuit.from_graph(graph, with_errors),
                     baselines=baselines)
    torch.testing.assert_close(b, vit(images[:1]).detach(), atol=1e-5, rtol=0)
    assert (a - b).abs().max() > 1e-4


def test_per_image_circuits_batch_like_single_runs(vit, saes, images, baselines):
    graphs = attribute(vit, saes, images, baselines=baselines)
    circuits = [Circuit.from_graph(g, prune_by_influence(g).node_masks) for g in graphs]
    batched = run_circuits(vit, saes, images, circuits, baselines=baselines, mode="deletion")
    for b, c in enumerate(circuits):
        single = run_circuits(vit, saes, images[b:b + 1], c, baselines=baselines, mode="deletion")
        torch.testing.assert_close(batched[b:b + 1], single, atol=1e-5, rtol=1e-5)
    data = circuits[0].to_json_dict()
    assert data["node_count"] == circuits[0].node_count > 0
    assert all(e["target"] == "logit" or e["target"].startswith("L") for e in data["edges"])


def test_circuit_errors_are_named(vit, saes, images, baselines):
    graph = attribute(vit, saes, images[:1], baselines=baselines)[0]
    circuit = all_or_nothing(graph, True)
    with pytest.raises(ValueError, match="got 2 circuits for 3 images"):
        run_circuits(vit, saes, images, [circuit, circuit], baselines=baselines)
    with pytest.raises(ValueError, match="unknown mode 'both'"):
        run_circuits(vit, saes, images, circuit, baselines=baselines, mode="both")
    with pytest.raises(ValueError, match="expected .* \\(nodes \\+ error\\)"):
        Circuit.from_graph(graph, [torch.ones(2, dtype=torch.bool)] * 2)
    with pytest.raises(KeyError, match="have no SAE"):
        run_circuits(vit, {"blocks.0.hook_resid_post": saes["blocks.0.hook_resid_post"]}, images,
                     circuit, baselines=baselines)
