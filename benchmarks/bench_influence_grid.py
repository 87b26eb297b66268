"""Viewer slider grid: `prune_by_influence_grid` vs one `prune_by_influence` call per position.

Setting: a random layered graph of the size of a ViT-B/16 trace (11 SAE layers of `--nodes`
latents, dense signed edges, the logit node), the viewer's grid (20 node x 6 edge thresholds).
The reference is the loop over positions that the viewer ran before; the same run checks that
both give identical masks and prints the ratio.

    python benchmarks/bench_influence_grid.py [--nodes 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rrm_plugin.attribution.graph import Graph, GraphLayer  # noqa: E402
from rrm_plugin.circuits.influence import prune_by_influence, prune_by_influence_grid  # noqa: E402
from rrm_plugin.viewer.steps import EDGE_THRESHOLDS, NODE_THRESHOLDS  # noqa: E402


def random_graph(n_layers: int, n_nodes: int, seed: int = 0) -> Graph:
    g = torch.Generator().manual_seed(seed)
    layers = []
    for k in range(n_layers):
        scores = torch.randn(n_nodes, generator=g)
        layers.append(GraphLayer(f"blocks.{k}.hook_resid_post", k, 24_576,
                                 torch.randperm(24_576, generator=g)[:n_nodes], None,
                                 scores.abs(), scores.abs(), scores,
                                 float(torch.randn(1, generator=g))))
    # Heavy-tailed edges, as attribution edges are: a few strong, most weak.
    edges = [torch.randn(n_nodes + 1, n_nodes, generator=g) ** 3 for _ in range(n_layers - 1)]
    logits = torch.randn(1000, generator=g)
    return Graph(layers, edges, target_class=0, metric="logit", value=float(logits[0]),
                 logits=logits, granularity="feature", n_tokens=197)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="latent nodes per layer")
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    graph = random_graph(args.layers, args.nodes)
    pairs = [(n, e) for n in NODE_THRESHOLDS for e in EDGE_THRESHOLDS]

    start = time.perf_counter()
    grid = prune_by_influence_grid(graph, node_thresholds=NODE_THRESHOLDS,
                                   edge_thresholds=EDGE_THRESHOLDS)
    grid_s = time.perf_counter() - start
    start = time.perf_counter()
    loop = {(n, e): prune_by_influence(graph, node_threshold=n, edge_threshold=e)
            for n, e in pairs}
    loop_s = time.perf_counter() - start

    for pair in pairs:
        for a, b in zip(grid[pair].node_masks + grid[pair].edge_masks,
                        loop[pair].node_masks + loop[pair].edge_masks, strict=True):
            assert torch.equal(a, b), pair
    result = {"layers": args.layers, "nodes_per_layer": args.nodes, "positions": len(pairs),
              "grid_s": round(grid_s, 2), "per_position_loop_s": round(loop_s, 2),
              "speedup": round(loop_s / grid_s, 2), "identical_masks": True}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
