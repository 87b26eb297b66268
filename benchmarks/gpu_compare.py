"""CUDA results against CPU results, with the tolerances `gpu_check.py` fails on.

Both runs are float32 with TF32 off (`device.py`), from the same seeded weights and inputs.

- `GRAPH_RTOL = 1e-4`, on every float of a graph (node scores, activations, deltas, error
  scores, edges, logits; each field's max |cuda - cpu| over max |cpu|). float32 rounds at
  6e-8 relative; cuBLAS sums the engine's products (up to ~10^6 terms per edge at ViT-B size)
  in another order and with other blockings than the CPU, and the two CPU algorithms of
  `bench_attribution.py` (ours vs the jacrev reference) already differ by 1.4e-6 at ViT-B size
  (benchmarks/RESULTS.md). 1e-4 leaves about 70x that margin, and stays 10x below the ~1e-3
  of TF32 matmuls, so a run with TF32 left on fails instead of passing as float32.
- Node sets (which latents are nodes, per layer and token), the target class, the sizes of the
  edge matrices: exactly equal. A node exists when a TopK keeps a latent or its value moves
  off the baseline; a flip there is a different graph, not a rounding difference, and is
  reported as such (it can come from a near-tie of two pre-activations; the report says which
  layer, so a reader can tell).
- `CURVE_ATOL = 1e-3`, faithfulness curves (per image, per sweep point: adjusted logit,
  probability, accuracy, node count) compared after dividing by each quantity's largest |cpu|
  value. Circuits are chosen by ranking scores; float32 noise below 1e-4 moves a node only at a
  near-tie, which moves a curve point by one node's effect, so a real disagreement shows as a
  jump far above 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

GRAPH_RTOL = 1e-4
CURVE_ATOL = 1e-3


class Comparison(NamedTuple):
    ok: bool
    worst: float
    """Largest relative difference found (inf where structure differs)."""
    details: dict
    problems: list[str]

    def as_dict(self) -> dict:
        return {"ok": self.ok, "worst": self.worst, "details": self.details,
                "problems": self.problems}


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| in float64 (0 for two empty or two all-zero tensors)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        return float("inf")
    if want.numel() == 0:
        return 0.0
    diff = float((got - want).abs().max())
    scale = float(want.abs().max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def compare_graphs(cpu, other, *, rtol: float = GRAPH_RTOL) -> Comparison:
    """Two `Graph`s of the same image and settings, node by node and edge by edge."""
    problems: list[str] = []
    details: dict[str, float] = {}
    if cpu.target_class != other.target_class:
        problems.append(f"target class {other.target_class} vs {cpu.target_class} on the CPU")
    if len(cpu.layers) != len(other.layers):
        problems.append(f"{len(other.layers)} layers vs {len(cpu.layers)}")
        return Comparison(False, float("inf"), details, problems)
    floats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        "logits": (other.logits, cpu.logits),
        "value": (torch.tensor([other.value]), torch.tensor([cpu.value])),
        "error_scores": (other.error_scores, cpu.error_scores),
    }
    same_nodes = True
    for k, (a, b) in enumerate(zip(cpu.layers, other.layers, strict=True)):
        nodes_a = a.features if a.tokens is None else torch.stack([a.tokens, a.features], 1)
        nodes_b = b.features if b.tokens is None else torch.stack([b.tokens, b.features], 1)
        if not torch.equal(nodes_a.cpu(), nodes_b.cpu()):
            same_nodes = False
            problems.append(f"layer {k} ({a.hook_name}): {len(b)} nodes vs {len(a)} on the CPU, "
                            "not the same latents")
            continue
        for name in ("scores", "activations", "deltas"):
            floats[f"layers.{k}.{name}"] = (getattr(b, name), getattr(a, name))
    if same_nodes:
        for k, (a, b) in enumerate(zip(cpu.edges, other.edges, strict=True)):
            a = a.to_dense() if a.is_sparse else a
            b = b.to_dense() if b.is_sparse else b
            floats[f"edges.{k}"] = (b, a)
    for name, (got, want) in floats.items():
        details[name] = rel_diff(got, want)
        if not details[name] <= rtol:
            problems.append(f"{name}: relative difference {details[name]:.2e} > {rtol:.0e}")
    worst = max(details.values(), default=0.0) if same_nodes else float("inf")
    return Comparison(not problems, worst, details, problems)


def compare_graph_files(cpu_path: Path, other_path: Path, *, rtol: float = GRAPH_RTOL
                        ) -> Comparison:
    from rrm_plugin.attribution.graph import Graph

    return compare_graphs(Graph.load(cpu_path), Graph.load(other_path), rtol=rtol)


def compare_curves(cpu: dict, other: dict, *, atol: float = CURVE_ATOL) -> Comparison:
    """Two `faithfulness.json` dicts: same images, every per-image curve within `atol` after
    scaling each quantity by its largest |CPU| value."""
    problems: list[str] = []
    details: dict[str, float] = {}
    if cpu.get("image_indices") != other.get("image_indices"):
        problems.append("the runs chose different images")
        return Comparison(False, float("inf"), details, problems)
    for method, modes in cpu["image_curves"].items():
        for mode, quantities in modes.items():
            for q, want in quantities.items():
                name = f"{method}/{mode}/{q}"
                try:
                    got = other["image_curves"][method][mode][q]
                except KeyError:
                    problems.append(f"{name} missing")
                    continue
                want_t = torch.tensor(want, dtype=torch.float64)
                got_t = torch.tensor(got, dtype=torch.float64)
                details[name] = rel_diff(got_t, want_t)
                if not details[name] <= atol:
                    problems.append(f"{name}: scaled difference {details[name]:.2e} > {atol:.0e}")
    worst = max(details.values(), default=0.0)
    return Comparison(not problems, worst, details, problems)


def compare_curve_files(cpu_path: Path, other_path: Path, *, atol: float = CURVE_ATOL
                        ) -> Comparison:
    return compare_curves(json.loads(Path(cpu_path).read_text()),
                          json.loads(Path(other_path).read_text()), atol=atol)
