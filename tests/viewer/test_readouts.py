"""Which slider positions get insertion / deletion readouts (`readouts=`): the budget curve's
circuits and the circuit shown first (`"curve"`, the default), every position (`"all"`), none.

Oracles: the steps' modes and params (which positions must be measured), the numbers of
`"all"` and of `run_circuits` on each circuit alone (what a measured position must show)."""

import pytest
import torch

import rrm_plugin.viewer.context as context_module
from rrm_plugin.circuits.circuit import Circuit, run_circuits
from rrm_plugin.errors import RRMUserError
from rrm_plugin.viewer.build import build_viewer
from rrm_plugin.viewer.check import check_payload
from rrm_plugin.viewer.steps import (
    DEFAULT_PARAMS,
    default_step,
    readout_steps,
    viewer_steps,
)

MODES = ("insertion", "deletion")
KEYS = ("logit", "adjusted_logit", "probability")


def test_readout_steps_pick_the_curve_and_the_default(graph):
    steps = viewer_steps(graph, DEFAULT_PARAMS)
    shown = default_step(steps, DEFAULT_PARAMS)
    assert steps[shown].params == DEFAULT_PARAMS
    curve = readout_steps(steps, readouts="curve", default_index=shown)
    assert curve == sorted({shown} | {i for i, s in enumerate(steps) if s.mode == "budget"})
    assert [steps[i].mode for i in curve].count("budget") == len(curve) - 1
    assert readout_steps(steps, readouts="all", default_index=shown) == list(range(len(steps)))
    assert readout_steps(steps, readouts="none", default_index=shown) == []
    with pytest.raises(RRMUserError, match=r"readouts must be one of \['curve', 'all', 'none'\]"):
        readout_steps(steps, readouts="some", default_index=shown)


def test_bad_readouts_are_refused_before_any_forward(vit, saes, images, graph, baselines,
                                                     monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("ran a forward")

    monkeypatch.setattr(context_module, "run_circuits_on_image", no_forward)
    monkeypatch.setattr(context_module, "clean_sae_cache", no_forward)
    with pytest.raises(RRMUserError, match="readouts must be one of"):
        build_viewer(graph, model=vit, saes=saes, image=images[0], baselines=baselines,
                     readouts="everything")


def _circuit_masks(circuits):
    return sorted(tuple(torch.cat([m.flatten() for m in c.latents] + [c.errors]).tolist())
                  for c in circuits)


def test_curve_runs_exactly_the_budget_circuits_and_the_default(vit, saes, images, graph,
                                                                baselines, monkeypatch):
    calls = []
    real = context_module.run_circuits_on_image

    def spy(model, saes_, image, circuits, **kwargs):
        calls.append((list(circuits), kwargs))
        return real(model, saes_, image, circuits, **kwargs)

    monkeypatch.setattr(context_module, "run_circuits_on_image", spy)
    payload = build_viewer(graph, model=vit, saes=saes, image=images[0], baselines=baselines)
    check_payload(payload, graph, where="payload")
    steps = viewer_steps(graph, DEFAULT_PARAMS)
    shown = default_step(steps, DEFAULT_PARAMS)
    measured = {i for i, s in enumerate(payload["steps"]) if "runs" in s}
    assert measured == {shown} | {i for i, s in enumerate(steps) if s.mode == "budget"}
    # One batched call: the distinct circuits of those steps (no repeats), plus the empty
    # circuit for the all-at-baseline reference, whose deletion row is not run.
    (circuits, kwargs), = calls
    wanted = {steps[i].nodes.numpy().tobytes(): steps[i] for i in sorted(measured)}
    expected = [Circuit.from_graph(graph, s.layer_masks(graph), list_edges=False)
                for s in wanted.values()]
    empty = Circuit.from_graph(graph, [torch.zeros(len(layer) + 1, dtype=torch.bool)
                                       for layer in graph.layers], list_edges=False)
    assert _circuit_masks(circuits) == _circuit_masks([*expected, empty])
    assert kwargs["deletion"] == [True] * len(expected) + [False]
    assert "all_at_baseline" in payload["reference"]


def test_all_equals_curve_where_both_measure_and_single_runs(vit, saes, images, graph,
                                                             baselines):
    curve = build_viewer(graph, model=vit, saes=saes, image=images[0], baselines=baselines)
    every = build_viewer(graph, model=vit, saes=saes, image=images[0], baselines=baselines,
                         readouts="all")
    none = build_viewer(graph, model=vit, saes=saes, image=images[0], baselines=baselines,
                        readouts="none")
    assert all("runs" in s for s in every["steps"])
    assert not any("runs" in s for s in none["steps"])
    assert "all_at_baseline" not in none["reference"]  # nothing run, nothing given
    for a, b in zip(curve["steps"], every["steps"], strict=True):
        if "runs" in a:
            for mode in MODES:
                for key in KEYS:
                    assert a["runs"][mode][key] == pytest.approx(b["runs"][mode][key],
                                                                 abs=1e-5)
    # "all": each position's numbers are its circuit run alone (`run_circuits`).
    steps = viewer_steps(graph, DEFAULT_PARAMS)
    cls = graph.target_class
    for i in (every["default_step"], 0, len(steps) // 2):
        circuit = Circuit.from_graph(graph, steps[i].layer_masks(graph))
        for mode in MODES:
            logits = run_circuits(vit, saes, images[:1], circuit, baselines=baselines,
                                  mode=mode)[0]
            assert every["steps"][i]["runs"][mode]["adjusted_logit"] == pytest.approx(
                float(logits[cls] - logits.mean()), abs=1e-5)
    for key in KEYS:
        assert curve["reference"]["all_at_baseline"][key] == pytest.approx(
            every["reference"]["all_at_baseline"][key], abs=1e-5)
