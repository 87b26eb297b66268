"""Attribution-graph speed and memory: the fast engine vs the authors' jacrev reference.

Setting (docs/method.md section 1): a randomly initialised ViT-B/16-shaped HookedViT (12 layers,
d_model 768, 12 heads, d_mlp 3072, 224 px, patch 16 -> 197 tokens) with random TopK SAEs of the
paper's sizes on block outputs 0..10, median baselines over a few random images, one image.

Each measurement runs in a fresh process (same seeds, so the same model, SAEs and image: built
on the CPU, then moved to `--device` in `--dtype`), timed around the attribution only, with peak
memory above the level just before the timed region (`device.py`: CUDA events after a
synchronisation and `torch.cuda.max_memory_allocated` on CUDA; wall clock and the resident set
size sampled every 2 ms on the CPU).

- `ours_full`: the full graph (one forward + backward, then every layer pair's edges).
- `ours_subset` / `reference_subset`: the same subset of layer pairs (default: 0->1 and 1->2,
  the reference's memory grows with the upper SAE's width and does not fit this machine for the
  wider layers), each including its own forward + backward pass. The reference gets the upper
  layer's `ghat` of the subset from our backward pass (equal to the authors' chain, see tests).
- `circuit_tracer_subset`: the same pairs the way circuit-tracer computes edges, batched VJPs of
  the linearised block, `--ct-rows` (512) active target rows per backward pass (see
  `circuit_tracer_edges`); like the reference it gets the upper layer's `ghat` from our pass.
- `forward_overhead`: the plain model vs the replacement model (SAEs spliced, error dropped).

`--image-size` shrinks the images (same widths and SAEs, fewer tokens) for a reduced setting.
`--graph-out PATH` saves the full graph (`Graph.save`), e.g. to compare a CUDA run with a CPU run
(`benchmarks/gpu_compare.py`).

    python benchmarks/bench_attribution.py [--pairs 0 1] [--threads 2] [--image-size 224]
        [--device cuda] [--dtype float32] [--tf32] [--graph-out DIR/graph] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device import (  # noqa: E402
    DeviceSettings,
    PeakMemory,
    Timer,
    add_device_arguments,
    configure,
    device_fields,
)

CPU = DeviceSettings("cpu", "float32", False)

PAPER_SAES = [(4, 0.25), (32, 0.5), (64, 1), (96, 2), (96, 2), (128, 2), (128, 4), (160, 4),
              (160, 4), (160, 4), (128, 2)]  # (k, expansion) for block outputs 0..10
# `--shape tiny`: the same pipeline on a 4-block, d_model 64 model (the CPU quick mode of
# gpu_check.py, which only has to show that every step runs and compares).
SHAPES = {
    "vit-b16": dict(n_layers=12, d_model=768, d_head=64, n_heads=12, d_mlp=3072, n_classes=1000,
                    saes=PAPER_SAES),
    "tiny": dict(n_layers=4, d_model=64, d_head=16, n_heads=4, d_mlp=128, n_classes=10,
                 saes=[(4, 1), (8, 1), (8, 2)]),
}


def setup(threads: int, image_size: int = 224, settings: DeviceSettings = CPU,
          shape: str = "vit-b16"):
    from vit_prisma.configs.HookedViTConfig import HookedViTConfig

    from rrm_plugin.attribution.baselines import compute_baselines
    from rrm_plugin.hosts.prisma import build_hooked_vit
    from rrm_plugin.saes.training import new_topk_sae
    from rrm_plugin.zoo.models import to_device

    torch.set_num_threads(threads)
    dims = {k: v for k, v in SHAPES[shape].items() if k != "saes"}
    cfg = HookedViTConfig(
        model_name=f"{shape}-random", **dims, activation_name="gelu", eps=1e-6, patch_size=16,
        image_size=image_size, n_channels=3, classification_type="cls",
        return_type="class_logits", normalization_type="LN", use_wandb=False,
    )
    # Built on the CPU from the seeds, then moved: the same weights on every device.
    model = to_device(build_hooked_vit(cfg, seed=0), device=settings.device,
                      dtype=settings.dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    saes = {}
    d = cfg.d_model
    for layer, (k, expansion) in enumerate(SHAPES[shape]["saes"]):
        hook = f"blocks.{layer}.hook_resid_post"
        saes[hook] = new_topk_sae(d_in=d, d_sae=int(expansion * d), k=k, hook_name=hook,
                                  model_name=cfg.model_name, seed=layer).eval()
        saes[hook] = saes[hook].to(settings.device).to(settings.torch_dtype)
        for p in saes[hook].parameters():
            p.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    move = dict(device=settings.device, dtype=settings.torch_dtype)
    reference_images = torch.rand(4, 3, image_size, image_size, generator=generator).to(**move)
    baselines = compute_baselines(model, saes, reference_images, batch_size=2, progress=False)
    image = torch.rand(1, 3, image_size, image_size, generator=generator).to(**move)
    return model, saes, baselines, image


def task_ours(threads: int, image_size: int, shape: str, pairs: list[int] | None,
              settings: DeviceSettings, graph_out: str | None, out_path: str) -> None:
    from rrm_plugin.attribution.build import graphs_from_forward
    from rrm_plugin.attribution.engine import block_weights, feature_edges, pair_inputs
    from rrm_plugin.attribution.forward import attribution_forward

    model, saes, baselines, image = setup(threads, image_size, settings, shape)
    hooks = list(saes)
    dev = settings.device
    with PeakMemory(dev) as mem, Timer(dev) as total:
        with Timer(dev) as forward_time:
            forward = attribution_forward(model, saes, image, baselines=baselines,
                                          capture_blocks=True)
        if pairs is None:
            graph = graphs_from_forward(model, saes, forward)[0]  # on the CPU, as returned
        else:
            layers, edges = forward.layers, {}
            nodes = {k: torch.nonzero(((t.acts[0] > 0) | (t.delta[0] != 0)).any(0))[:, 0]
                     for k, t in enumerate(layers)}  # the graph's nodes, as in `attribute`
            for k in pairs:
                x = pair_inputs(layers[k], layers[k + 1], forward.blocks[layers[k + 1].block],
                                saes[hooks[k]], saes[hooks[k + 1]], 0)
                edges[k] = feature_edges(block_weights(model, layers[k + 1].block), x,
                                         sources=nodes[k], targets=nodes[k + 1])
    result = {"seconds": total.seconds, "forward_backward_seconds": forward_time.seconds,
              "edges_seconds": total.seconds - forward_time.seconds, "peak_bytes": mem.bytes}
    if pairs is None:
        if graph_out:
            graph.save(graph_out)
        result["nodes"] = sum(len(layer) for layer in graph.layers)
        result["edges"] = sum(int((e != 0).sum()) for e in graph.edges)
        result["active_targets"] = [int((forward.layers[k].acts[0] > 0).any(0).sum())
                                    for k in range(len(hooks))]
        tensors = {}
    else:
        tensors = {}
        edges = {k: e.cpu() for k, e in edges.items()}
        nodes = {k: n.cpu() for k, n in nodes.items()}
        for k, e in edges.items():  # scatter into [d_src + 1, d_tgt] as the reference has them
            rows = torch.cat([nodes[k], torch.tensor([saes[hooks[k]].cfg.d_sae])])
            dense = torch.zeros(saes[hooks[k]].cfg.d_sae + 1,
                                saes[hooks[k + 1]].cfg.d_sae, dtype=e.dtype)
            dense[rows[:, None], nodes[k + 1][None, :]] = e
            tensors[f"edges.{k}"] = dense
        for k in pairs:
            for layer in (k, k + 1):
                tensors[f"nodes.{layer}"] = forward.layers[layer].node_scores[0].sum(0)
                tensors[f"error.{layer}"] = forward.layers[layer].error_scores[0].reshape(())
        tensors = {k: v.cpu().clone() for k, v in tensors.items()}
    torch.save({"result": result, "tensors": tensors}, out_path)


def task_reference(threads: int, image_size: int, shape: str, pairs: list[int],
                   settings: DeviceSettings, out_path: str) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the reference is a test oracle
    from rrm_plugin.attribution.forward import attribution_forward
    from tests.attribution.reference import reference_graph

    model, saes, baselines, image = setup(threads, image_size, settings, shape)
    baselines = baselines.to(settings.device)
    top_pair = max(pairs)
    forward = attribution_forward(model, saes, image, baselines=baselines)
    upper = {top_pair + 1: forward.layers[top_pair + 1].grad_acts[0]}
    del forward
    with PeakMemory(settings.device) as mem, Timer(settings.device) as timer:
        ref = reference_graph(model, saes, image, baselines=baselines, pairs=pairs,
                              upper_grads=upper)
    tensors = {}
    for k in pairs:
        tensors[f"edges.{k}"] = ref.edges[k]
        for layer in (k, k + 1):
            if layer in ref.node_scores:
                tensors[f"nodes.{layer}"] = ref.node_scores[layer].sum(0)
                tensors[f"error.{layer}"] = torch.tensor(ref.error_scores[layer])
    tensors = {k: torch.as_tensor(v).cpu() for k, v in tensors.items()}
    torch.save({"result": {"seconds": timer.seconds, "peak_bytes": mem.bytes},
                "tensors": tensors}, out_path)


def task_forward(threads: int, image_size: int, shape: str, settings: DeviceSettings, out_path: str,
                 repeats: int = 5) -> None:
    from rrm_plugin.replacement.splice import splice_saes

    model, saes, _, image = setup(threads, image_size, settings, shape)
    batch = image.expand(8, -1, -1, -1).contiguous()

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            with Timer(settings.device) as timer:
                fn()
            times.append(timer.seconds)
        return min(times)

    with torch.no_grad():
        plain = timed(lambda: model(batch))
        with splice_saes(model, saes, keep_error=False):
            spliced = timed(lambda: model(batch))
        with splice_saes(model, saes, keep_error=True):
            spliced_error = timed(lambda: model(batch))
    torch.save({"result": {"plain": plain, "replacement": spliced,
                           "replacement_keep_error": spliced_error, "batch": 8}, "tensors": {}},
               out_path)


def circuit_tracer_edges(model, saes, image, *, baselines, upper_grads: dict, pairs: list[int],
                         rows: int = 512) -> dict[int, torch.Tensor]:
    """Edges the way circuit-tracer computes them: batched VJPs of the linearised model.

    circuit-tracer (`decoderesearch/circuit-tracer`, `attribution/attribute.py`) replicates the
    input `rows` times, runs the frozen (linearised) forward once, and for each batch of up to
    `rows` active target rows backpropagates one cotangent per batch element
    (`retain_graph=True`), then reads every source's edge as (gradient at the source's layer) .
    (its decoder direction x its activation). Here a target row is a pair (token t', latent o)
    of the upper SAE with o active at t'; its cotangent on block k+1's output is
    `ghat[t', o] / (s'_t' + eps) * centred W_enc[:, o]` at token t' (zero elsewhere), and the
    source side is `W_dec[i] s_t dz[t, i]` at every token t (the error node: `de[t]`). The block's
    attention pattern, LayerNorm scales and MLP gate are frozen (`frozen_backward` of the test
    oracle), the SAE std is a constant, as in the reference.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.attribution.reference import SAE_EPS, _layers, _sae_forward, frozen_backward

    layers = _layers(saes)
    baselines = baselines.to(image.device)
    xs: dict[int, torch.Tensor] = {}
    hooks = [(h, lambda t, hook, k=k: xs.__setitem__(k, t[0].detach()))
             for k, (_, h) in enumerate(layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(image)
    out = {}
    for k in sorted(pairs):
        src, tgt = saes[layers[k][1]], saes[layers[k + 1][1]]
        with torch.no_grad():
            z_src, std_src, err_src = _sae_forward(src, xs[k])
            z_tgt, std_tgt, _ = _sae_forward(tgt, xs[k + 1])
        dz = z_src - baselines.features[layers[k][1]]
        de = err_src - baselines.errors[layers[k][1]]
        W_enc = tgt.W_enc.detach()
        if tgt.cfg.normalize_activations == "layer_norm":
            enc, scale = W_enc - W_enc.mean(0, keepdim=True), std_tgt + SAE_EPS
        else:
            enc, scale = W_enc, torch.ones_like(std_tgt)
        t_rows, o_rows = torch.nonzero(z_tgt > 0, as_tuple=True)
        coeff = upper_grads[k + 1][t_rows, o_rows] / scale[t_rows, 0]
        source = src.W_dec.detach()  # [d_src, d_model]
        c_src = std_src * dz  # [pos, d_src]
        n_pos, d_model = xs[k].shape
        n = min(rows, len(t_rows))
        with frozen_backward(model), torch.enable_grad():
            x_in = xs[k][None].expand(n, -1, -1).clone().requires_grad_(True)
            y = model.blocks[layers[k + 1][0]](x_in)  # one forward, batch = rows
        like = dict(device=source.device, dtype=source.dtype)
        edges = torch.zeros(src.cfg.d_sae + 1, tgt.cfg.d_sae, **like)
        for start in range(0, len(t_rows), n):
            t, o = t_rows[start:start + n], o_rows[start:start + n]
            m = len(t)
            cot = torch.zeros(n, n_pos, d_model, **like)
            rows_m = torch.arange(m, device=source.device)
            cot[rows_m, t] = coeff[start:start + n, None] * enc[:, o].T
            g = torch.autograd.grad(y, x_in, cot, retain_graph=True)[0][:m]  # [m, pos, d_model]
            feat = torch.einsum("ptd,id,ti->pi", g, source, c_src)
            err = torch.einsum("ptd,td->p", g, de)
            edges.index_add_(1, o, torch.cat([feat, err[:, None]], dim=1).T)
        out[k] = edges
    return out


def task_circuit_tracer(threads: int, image_size: int, shape: str, pairs: list[int], rows: int,
                        settings: DeviceSettings, out_path: str) -> None:
    from rrm_plugin.attribution.forward import attribution_forward

    model, saes, baselines, image = setup(threads, image_size, settings, shape)
    forward = attribution_forward(model, saes, image, baselines=baselines)
    upper = {k + 1: forward.layers[k + 1].grad_acts[0] for k in pairs}
    del forward
    with PeakMemory(settings.device) as mem, Timer(settings.device) as timer:
        edges = circuit_tracer_edges(model, saes, image, baselines=baselines,
                                     upper_grads=upper, pairs=pairs, rows=rows)
    tensors = {f"edges.{k}": e.cpu() for k, e in edges.items()}
    torch.save({"result": {"seconds": timer.seconds, "peak_bytes": mem.bytes, "rows": rows},
                "tensors": tensors}, out_path)


def run_task(name: str, *args) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.pt")
        target = {"ours": task_ours, "reference": task_reference, "forward": task_forward,
                  "circuit_tracer": task_circuit_tracer}[name]
        proc = ctx.Process(target=target, args=(*args, out))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"benchmark task {name} failed (exit code {proc.exitcode})")
        return torch.load(out, weights_only=False)


def max_rel_diff(ours: dict, ref: dict) -> dict[str, float]:
    out = {}
    for key, r in ref.items():
        a = ours[key]
        out[key] = float((a - r).abs().max() / r.abs().max().clamp(min=1e-30))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[0, 1],
                        help="source layers k of the pairs k->k+1 compared with the reference")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--image-size", type=int, default=224,
                        help="image side in pixels (patch 16); 224 is the ViT-B/16 setting")
    parser.add_argument("--ct-rows", type=int, default=512,
                        help="target rows per backward pass of the circuit-tracer-style baseline")
    parser.add_argument("--skip-circuit-tracer", action="store_true")
    parser.add_argument("--skip-forward", action="store_true",
                        help="skip the plain vs replacement forward-pass timing")
    parser.add_argument("--graph-out", type=Path, default=None,
                        help="save the full graph here (Graph.save: .json + .safetensors)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="vit-b16",
                        help="vit-b16 (the measured setting) or tiny (a smoke run)")
    add_device_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    settings = configure(args)
    gib = 2 ** 30
    size = args.image_size
    print(f"{args.shape}-shaped random HookedViT ({size} px, {(size // 16) ** 2 + 1} tokens), "
          f"random TopK SAEs {SHAPES[args.shape]['saes']}, 1 image, {args.threads} threads, "
          f"torch {torch.__version__}, "
          f"{settings.device} {settings.dtype}{' TF32' if settings.tf32 else ''}")
    report: dict = {"threads": args.threads, "pairs": args.pairs, "image_size": size,
                    "shape": args.shape,
                    **device_fields(settings)}
    graph_out = str(args.graph_out) if args.graph_out else None

    full = run_task("ours", args.threads, size, args.shape, None, settings, graph_out)["result"]
    report["ours_full"] = full
    n_pairs = len(SHAPES[args.shape]["saes"]) - 1
    print(f"ours, full graph ({n_pairs} layer pairs): {full['seconds']:.1f} s "
          f"(forward+backward {full['forward_backward_seconds']:.1f} s, edges "
          f"{full['edges_seconds']:.1f} s), peak {full['peak_bytes'] / gib:.2f} GiB; "
          f"{full['nodes']} nodes, {full['edges']} non-zero edges; active latents per layer "
          f"{full['active_targets']}")

    subset = run_task("ours", args.threads, size, args.shape, args.pairs, settings, None)
    report["ours_subset"] = subset["result"]
    pairs = ", ".join(f"{k}->{k + 1}" for k in args.pairs)
    print(f"ours, pairs {pairs}: {subset['result']['seconds']:.2f} s, peak "
          f"{subset['result']['peak_bytes'] / gib:.2f} GiB")
    if not args.skip_reference:
        ref = run_task("reference", args.threads, size, args.shape, args.pairs, settings)
        report["reference_subset"] = ref["result"]
        diffs = max_rel_diff(subset["tensors"], ref["tensors"])
        report["max_rel_diff"] = diffs
        speed = ref["result"]["seconds"] / subset["result"]["seconds"]
        memory = subset["result"]["peak_bytes"] / ref["result"]["peak_bytes"]
        report["speedup"], report["memory_ratio"] = speed, memory
        print(f"reference (jacrev), pairs {pairs}: {ref['result']['seconds']:.2f} s, peak "
              f"{ref['result']['peak_bytes'] / gib:.2f} GiB")
        print(f"speed-up {speed:.1f}x; peak memory ours/reference {memory:.3f} "
              f"(1/{1 / memory:.1f}); max relative difference {max(diffs.values()):.2e} "
              f"({', '.join(f'{k} {v:.1e}' for k, v in diffs.items())})")
    if not args.skip_circuit_tracer:
        ct = run_task("circuit_tracer", args.threads, size, args.shape, args.pairs, args.ct_rows,
                      settings)
        report["circuit_tracer_subset"] = ct["result"]
        diffs = max_rel_diff(subset["tensors"], ct["tensors"])
        report["circuit_tracer_max_rel_diff"] = diffs
        speed = ct["result"]["seconds"] / subset["result"]["seconds"]
        memory = subset["result"]["peak_bytes"] / ct["result"]["peak_bytes"]
        report["circuit_tracer_speedup"] = speed
        report["circuit_tracer_memory_ratio"] = memory
        print(f"circuit-tracer-style batched VJPs ({args.ct_rows} target rows per backward), "
              f"pairs {pairs}: {ct['result']['seconds']:.2f} s, peak "
              f"{ct['result']['peak_bytes'] / gib:.2f} GiB")
        print(f"speed-up vs circuit-tracer style {speed:.1f}x; peak memory ours/theirs "
              f"{memory:.3f} (1/{1 / memory:.1f}); max relative difference of the edges "
              f"{max(diffs.values()):.2e}")

    if args.skip_forward:
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        return
    fwd = run_task("forward", args.threads, size, args.shape, settings)["result"]
    report["forward"] = fwd
    print(f"forward pass, batch {fwd['batch']}: plain {fwd['plain'] * 1e3:.0f} ms, replacement "
          f"model {fwd['replacement'] * 1e3:.0f} ms ({fwd['replacement'] / fwd['plain']:.2f}x), "
          f"with error kept {fwd['replacement_keep_error'] * 1e3:.0f} ms "
          f"({fwd['replacement_keep_error'] / fwd['plain']:.2f}x)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
