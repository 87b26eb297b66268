"""The influence-pruned circuits of a faithfulness run (`influence_circuit`): each image's graph
pruned at 0.8 / 0.98, its node count, circuit-tracer scores and the circuit run in both modes,
checked image by image against hooks written out here."""

import numpy as np
import pytest
import torch

from rrm_plugin.attribution.build import attribute
from rrm_plugin.circuits.influence import graph_scores, prune_by_influence
from rrm_plugin.metrics.faithfulness import FaithfulnessConfig, evaluate_faithfulness
from rrm_plugin.replacement.splice import splice_saes


def circuit_logits(vit, saes, image, node_masks, baselines, mode):
    """Logits of one image with the circuit kept (insertion) or set to baseline (deletion).

    A kept error node holds its value of the clean spliced run (the protocol's rule), not the
    error of the intervened run."""
    with torch.no_grad(), splice_saes(vit, saes, keep_error=True):
        _, cache = vit.run_with_cache(image)
    hooks = []
    for mask in node_masks:
        h, graph_features = mask["hook_name"], mask["features"]
        in_circuit = torch.zeros(saes[h].cfg.d_sae, dtype=torch.bool)
        in_circuit[graph_features[mask["kept"][:-1]]] = True
        error_in = bool(mask["kept"][-1])
        keep = in_circuit if mode == "insertion" else ~in_circuit
        keep_error = error_in if mode == "insertion" else not error_in

        def acts(z, hook, keep=keep, base=baselines.features[h]):
            return torch.where(keep, z, base)

        def error(e, hook, keep_error=keep_error, base=baselines.errors[h],
                  clean=cache[f"{h}.hook_sae_error"]):
            return clean if keep_error else base.expand_as(e)

        hooks += [(f"{h}.hook_sae_acts_post", acts), (f"{h}.hook_sae_error", error)]
    with torch.no_grad(), splice_saes(vit, saes, keep_error=True):
        return vit.run_with_hooks(image, fwd_hooks=hooks)[0]


def test_influence_circuit_summary_is_the_mean_over_each_images_pruned_circuit(
        vit, saes, images, baselines):
    labels = vit(images).argmax(-1).detach()  # every image correct, kept in order
    config = FaithfulnessConfig(sweep=(0.0, 1.0), methods=("rrm_edge",), batch_size=2)
    res = evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, config=config,
                                progress=False)
    assert res.image_indices == [0, 1, 2]
    want: dict[str, list[float]] = {}
    for b in range(len(images)):
        graph = attribute(vit, saes, images[b:b + 1], baselines=baselines,
                          classes=[int(labels[b])])[0]
        pruned = prune_by_influence(graph)
        scores = graph_scores(graph)
        masks = [{"hook_name": layer.hook_name, "features": layer.features, "kept": m}
                 for layer, m in zip(graph.layers, pruned.node_masks, strict=True)]
        row = {"nodes": sum(int(m.sum()) for m in pruned.node_masks),
               "circuit_tracer_replacement_score": scores.replacement,
               "circuit_tracer_completeness_score": scores.completeness}
        for mode in ("insertion", "deletion"):
            logits = circuit_logits(vit, saes, images[b:b + 1], masks, baselines, mode)
            y = int(labels[b])
            row[f"{mode}_adjusted_logit"] = float(logits[y] - logits.mean())
            row[f"{mode}_probability"] = float(logits.softmax(-1)[y])
            row[f"{mode}_accuracy"] = float(logits.argmax() == y)
        for key, value in row.items():
            want.setdefault(key, []).append(value)
    assert set(res.influence_circuit) == set(want)
    for key, values in want.items():
        assert res.influence_circuit[key] == pytest.approx(np.mean(values), abs=1e-4), key
    # The images differ, so a summary of one image repeated would show.
    assert len(set(want["insertion_adjusted_logit"])) == 3
    assert 0 < np.mean(want["nodes"]) < sum(len(layer) + 1 for layer in graph.layers)
