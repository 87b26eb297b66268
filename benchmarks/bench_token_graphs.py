"""Token graphs at ViT-B scale (issue 11 section 4): time and peak memory against image size.

Setting: the ViT-B/16-shaped random HookedViT and random TopK SAEs of the paper's sizes of
`bench_attribution.py` (its `setup`), built at 224 px; other sizes through
`rrm_plugin.hosts.prisma.with_image_size` (position embedding resampled: 112 px -> 50 tokens,
224 px -> 197, 448 px -> 785). Median baselines over 4 random images of that size, one random
image, adjusted logit of the predicted class, `granularity="token"`, all 10 layer pairs.

Each setting runs in a fresh process. `attribute` (forward, backward and every layer pair's token
edges) is timed, with the peak resident set size above the level at its start; then circuit-
tracer's influence pruning (`prune_by_influence`, 0.8 / 0.98) and the graph scores of the result.
Sparse settings keep each target node's `--top-k` strongest in-edges plus its error edge
(`EngineConfig(token_top_k=...)`); `--dense-sizes` also run the dense edge matrices at those
sizes for comparison (only where they fit in memory: the dense matrices of a ViT-B token graph
take `sum_k (n_src_k + 1) n_tgt_k` floats, which the script reports for every size).

    python benchmarks/bench_token_graphs.py [--sizes 112 224] [--dense-sizes 112] [--top-k 64]
        [--pair-sizes 448 --pairs 0 1 2 3] [--device cuda] [--dtype float32] [--tf32]

On `--device cuda` the times are CUDA-event times after a synchronisation and the peaks are
`torch.cuda.max_memory_allocated` above the start (`device.py`); the graphs are returned on the
CPU, so pruning (`prune_by_influence`) runs on the CPU on every device.

`--pair-sizes` measures the nodes of the whole graph and the edges of `--pairs` only: at 448 px
every target's exact row of in-edges spans ~10^5 sources, and the ten pairs take hours on a
2-core CPU (the printed per-pair times say how many).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import CPU, PAPER_SAES, setup  # noqa: E402
from device import (  # noqa: E402
    DeviceSettings,
    PeakMemory,
    Timer,
    add_device_arguments,
    configure,
    device_fields,
)

GiB = 2**30


def task_pairs(threads: int, image_size: int, top_k: int, chunk_elements: int,
               pairs: list[int], settings: DeviceSettings, out_path: str) -> None:
    """Nodes of the whole token graph (one forward + backward) and the top-k token edges of the
    given layer pairs only, each pair timed (for sizes whose full graph takes hours on a CPU)."""
    from rrm_plugin.attribution.build import _layer_nodes
    from rrm_plugin.attribution.engine import EngineConfig, block_weights, pair_inputs
    from rrm_plugin.attribution.forward import attribution_forward
    from rrm_plugin.attribution.token_engine import token_edges

    model, saes, baselines, image = _setup(threads, image_size, settings)
    engine = EngineConfig(token_top_k=top_k, chunk_elements=chunk_elements,
                          max_token_edges=2**62)
    hooks = list(saes)
    dev = settings.device
    with PeakMemory(dev) as mem, Timer(dev) as total:
        with Timer(dev) as forward_time:
            forward = attribution_forward(model, saes, image, baselines=baselines,
                                          capture_blocks=True)
        layers = forward.layers
        nodes = []
        for trace in layers:  # the graph's nodes, picked as `attribute` picks them
            features, tokens, *_ = _layer_nodes(trace.acts[0], trace.delta[0],
                                                trace.node_scores[0], "token")
            nodes.append(torch.stack([tokens, features], 1))
        per_pair = {}
        for k in pairs:
            with Timer(dev) as pair_time:
                x = pair_inputs(layers[k], layers[k + 1], forward.blocks[layers[k + 1].block],
                                saes[hooks[k]], saes[hooks[k + 1]], 0)
                edges = token_edges(block_weights(model, layers[k + 1].block), x,
                                    sources=nodes[k], targets=nodes[k + 1], config=engine)
            per_pair[k] = {"seconds": pair_time.seconds, "stored_edges": edges._nnz(),
                           "dense_edge_entries": (len(nodes[k]) + 1) * len(nodes[k + 1])}
            print(f"  pair {k}->{k + 1}: {per_pair[k]['seconds']:.1f} s, "
                  f"{len(nodes[k]):,} -> {len(nodes[k + 1]):,} nodes", flush=True)
    torch.save({
        "image_size": image_size, "tokens": layers[0].acts.shape[1], "top_k": top_k,
        "pairs": pairs, "nodes": sum(len(n) for n in nodes),
        "nodes_per_layer": [len(n) for n in nodes],
        "forward_backward_seconds": forward_time.seconds,
        "edges_seconds": total.seconds - forward_time.seconds, "per_pair": per_pair,
        "peak_gib": mem.bytes / GiB,
        "process_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
    }, out_path)


def _setup(threads: int, image_size: int, settings: DeviceSettings = CPU):
    from rrm_plugin.attribution.baselines import compute_baselines
    from rrm_plugin.hosts.prisma import with_image_size
    from rrm_plugin.zoo.models import to_device

    model, saes, baselines, image = setup(threads, 224, settings)
    if image_size != 224:  # resized on the CPU (the same weights on every device), then moved
        model = with_image_size(model.cpu(), image_size)
        model = to_device(model, device=settings.device, dtype=settings.dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        generator = torch.Generator().manual_seed(0)
        move = dict(device=settings.device, dtype=settings.torch_dtype)
        reference = torch.rand(4, 3, image_size, image_size, generator=generator).to(**move)
        baselines = compute_baselines(model, saes, reference, batch_size=2, progress=False)
        image = torch.rand(1, 3, image_size, image_size, generator=generator).to(**move)
    return model, saes, baselines, image


def task(threads: int, image_size: int, top_k: int | None, chunk_elements: int,
         settings: DeviceSettings, out_path: str) -> None:
    from rrm_plugin.attribution.build import attribute
    from rrm_plugin.attribution.engine import EngineConfig
    from rrm_plugin.circuits.influence import graph_scores, prune_by_influence

    model, saes, baselines, image = _setup(threads, image_size, settings)
    engine = EngineConfig(token_top_k=top_k, chunk_elements=chunk_elements,
                          max_token_edges=2**62)
    with PeakMemory(settings.device) as mem, Timer(settings.device) as attribute_time:
        graph = attribute(model, saes, image, baselines=baselines, granularity="token",
                          engine=engine, progress=True)[0]
    with PeakMemory() as prune_mem, Timer("cpu") as prune_time:  # graphs are on the CPU
        pruned = prune_by_influence(graph)
    scores = graph_scores(graph)
    stored = sum(e._nnz() if e.is_sparse else int((e != 0).sum()) for e in graph.edges)
    dense_entries = sum(e.shape[0] * e.shape[1] for e in graph.edges)
    result = {
        "image_size": image_size, "tokens": graph.n_tokens, "top_k": top_k,
        "nodes": sum(len(layer) for layer in graph.layers),
        "nodes_per_layer": [len(layer) for layer in graph.layers],
        "stored_edges": stored, "dense_edge_entries": dense_entries,
        "dense_edge_gib": dense_entries * 4 / GiB,
        "attribute_seconds": attribute_time.seconds, "attribute_peak_gib": mem.bytes / GiB,
        "prune_seconds": prune_time.seconds, "prune_peak_gib": prune_mem.bytes / GiB,
        # The process's own high-water mark (model, SAEs and all), since memory freed earlier
        # (baselines) is reused without raising the resident set above its start.
        "process_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
        "circuit_nodes": sum(int(m.sum()) for m in pruned.node_masks),
        "replacement_score": scores.replacement, "completeness_score": scores.completeness,
    }
    torch.save(result, out_path)


def run(*args, target=task) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.pt")
        proc = ctx.Process(target=target, args=(*args, out))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"token-graph task {args} failed (exit code {proc.exitcode})")
        return torch.load(out, weights_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[112, 224])
    parser.add_argument("--dense-sizes", type=int, nargs="*", default=[112])
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-elements", type=int, default=2**25)
    parser.add_argument("--pair-sizes", type=int, nargs="*", default=[],
                        help="sizes measured on --pairs only (nodes of the whole graph, top-k "
                             "edges of those layer pairs), e.g. 448")
    parser.add_argument("--pairs", type=int, nargs="+", default=[0, 1, 2, 3])
    add_device_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    settings = configure(args)
    print(f"ViT-B/16-shaped random HookedViT, random TopK SAEs {PAPER_SAES}, token graphs of "
          f"all 10 pairs, {args.threads} threads, chunk_elements {args.chunk_elements}, "
          f"torch {torch.__version__}, {settings.device} {settings.dtype}", flush=True)
    runs = [(size, None) for size in args.dense_sizes] + [(size, args.top_k)
                                                         for size in args.sizes]
    results = []
    for size, top_k in runs:
        r = run(args.threads, size, top_k, args.chunk_elements, settings)
        results.append(r)
        kind = "dense" if top_k is None else f"top-{top_k}"
        print(f"{size} px ({r['tokens']} tokens), {kind}: {r['nodes']:,} nodes "
              f"(per layer {r['nodes_per_layer']}), {r['stored_edges']:,} stored edges "
              f"(dense matrices: {r['dense_edge_entries']:,} entries = "
              f"{r['dense_edge_gib']:.1f} GiB); attribute {r['attribute_seconds']:.1f} s, peak "
              f"{r['attribute_peak_gib']:.2f} GiB; prune {r['prune_seconds']:.1f} s, peak "
              f"{r['prune_peak_gib']:.2f} GiB; process max RSS {r['process_max_rss_gib']:.2f} GiB; "
              f"{r['circuit_nodes']:,} circuit nodes; "
              f"replacement {r['replacement_score']:.3f}, completeness "
              f"{r['completeness_score']:.3f}", flush=True)
    for size in args.pair_sizes:
        r = run(args.threads, size, args.top_k, args.chunk_elements, args.pairs, settings,
                target=task_pairs)
        r["kind"] = "pairs"
        results.append(r)
        per_pair = [round(v["seconds"], 1) for v in r["per_pair"].values()]
        print(f"{size} px ({r['tokens']} tokens), top-{args.top_k}, pairs {args.pairs} only: "
              f"{r['nodes']:,} nodes in the whole graph (per layer {r['nodes_per_layer']}); "
              f"forward + backward {r['forward_backward_seconds']:.1f} s; edges of the pairs "
              f"{r['edges_seconds']:.1f} s ({per_pair} s per pair); peak {r['peak_gib']:.2f} GiB; "
              f"process max RSS "
              f"{r['process_max_rss_gib']:.2f} GiB", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                        **device_fields(settings), "runs": results}, indent=2))


if __name__ == "__main__":
    main()
