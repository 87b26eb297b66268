"""`trace(readouts=...)`: the summary's insertion / deletion / all-at-baseline readouts come from
the viewer's batched rows when the viewer measures the circuit shown first, and are the same
numbers as `run_circuits` on the traced circuit alone (float32, within 1e-5)."""

import pytest
import torch

import rrm_plugin.viewer.context as context_module
import rrm_plugin.workflows.trace as trace_module
from rrm_plugin.circuits.circuit import run_circuits
from rrm_plugin.errors import RRMUserError
from rrm_plugin.workflows.trace import TraceConfig, trace
from tests.workflows.test_trace import _all_at_baseline

KEYS = ("logit", "adjusted_logit", "probability")


def _close(a: dict, b: dict) -> None:
    for key in KEYS:
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert a["predicted_class"] == b["predicted_class"]


def _readout(logits, cls):
    return {"logit": float(logits[cls]), "adjusted_logit": float(logits[cls] - logits.mean()),
            "probability": float(torch.softmax(logits.double(), -1)[cls]),
            "predicted_class": int(logits.argmax())}


@pytest.mark.parametrize("readouts", ["curve", "all", "none"])
def test_summary_readouts_are_the_circuit_run_alone(vit, saes, images, baselines,
                                                    reference_images, monkeypatch, readouts):
    batched = []
    real = trace_module.run_circuits_on_image
    monkeypatch.setattr(trace_module, "run_circuits_on_image",
                        lambda *a, **k: batched.append(1) or real(*a, **k))
    result = trace(vit, saes, images[1], baselines=baselines,
                   reference_images=reference_images[:4], readouts=readouts)
    # The rows are reused: trace runs the circuit itself only when the viewer did not.
    assert len(batched) == (1 if readouts == "none" else 0)
    cls = result.target_class
    for mode in ("insertion", "deletion"):
        logits = run_circuits(vit, saes, images[1][None], result.circuit, baselines=baselines,
                              mode=mode)[0]
        _close(result.readouts[mode], _readout(logits, cls))
    _close(result.readouts["all_at_baseline"],
           _readout(_all_at_baseline(vit, saes, images[1], baselines), cls))
    steps = result.viewer["steps"]
    shown = steps[result.viewer["default_step"]]
    if readouts == "none":
        assert not any("runs" in s for s in steps)
    else:
        # The summary's numbers are exactly the page's for the circuit shown first.
        assert shown["node_count"] == result.circuit.node_count
        assert {m: shown["runs"][m] for m in ("insertion", "deletion")} == {
            m: result.readouts[m] for m in ("insertion", "deletion")}
        assert result.viewer["reference"]["all_at_baseline"] == result.readouts["all_at_baseline"]
        measured = sum("runs" in s for s in steps)
        assert measured == (len(steps) if readouts == "all" else
                            1 + sum(s["mode"] == "budget" for s in steps))


def test_bad_readouts_are_refused_before_any_work(vit, saes, images, baselines, monkeypatch):
    monkeypatch.setattr(trace_module, "attribute",
                        lambda *a, **k: pytest.fail("attribute ran before the check"))
    monkeypatch.setattr(context_module, "run_circuits_on_image",
                        lambda *a, **k: pytest.fail("readouts ran before the check"))
    with pytest.raises(RRMUserError, match=r"readouts must be one of \['curve', 'all', 'none'\], "
                                           r"got 'some'"):
        trace(vit, saes, images[0], baselines=baselines, readouts="some")
    with pytest.raises(RRMUserError, match="readouts must be one of"):
        TraceConfig(readouts="ALL")


def test_payload_rows_are_reused_only_for_the_same_circuit(vit, saes, images, baselines,
                                                           reference_images, monkeypatch):
    """If the step shown first kept other nodes than the traced circuit, its numbers would be
    another circuit's: trace then runs its own circuit."""
    import base64

    real_build, real_runs = trace_module.build_viewer, trace_module.run_circuits_on_image
    batched = []

    def build_viewer(graph, **kwargs):
        payload = real_build(graph, **kwargs)
        step = payload["steps"][payload["default_step"]]
        bits = bytearray(base64.b64decode(step["nodes"]))
        bits[0] ^= 1  # one node more or less
        step["nodes"] = base64.b64encode(bytes(bits)).decode()
        step["runs"]["insertion"] = {**step["runs"]["insertion"], "adjusted_logit": 1e6}
        return payload

    monkeypatch.setattr(trace_module, "build_viewer", build_viewer)
    monkeypatch.setattr(trace_module, "run_circuits_on_image",
                        lambda *a, **k: batched.append(1) or real_runs(*a, **k))
    result = trace(vit, saes, images[1], baselines=baselines,
                   reference_images=reference_images[:4])
    assert batched == [1]
    logits = run_circuits(vit, saes, images[1][None], result.circuit, baselines=baselines)[0]
    _close(result.readouts["insertion"], _readout(logits, result.target_class))
