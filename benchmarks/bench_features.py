"""Feature top-k collection: batched `collect_top_activations` vs a per-feature heap loop.

Both run in the same process on the same activations source: `digits-vit` with every SAE of
`rrm-digits-vit` over the 359 held-out images. The reference is what one writes without
batching the bookkeeping: per batch, per feature, per image a `heapq` push of (score, image),
then the top-k per feature; it computes only the top images and their scores (no maps, densities
or histograms), so it does strictly less work. The two must give the same top-k images.

With `--d-sae N --n-images M`, the SAEs are replaced by one random TopK SAE of width N (k 64)
on `blocks.1.hook_resid_post` and the images by M fresh training renders: the scale where the
per-feature loop matters (ViT-B releases have 3,072-49,152 features per layer).

    python benchmarks/bench_features.py [--k 8] [--threads 1] [--repeats 3] [--d-sae N]
        [--n-images M] [--device cuda] [--dtype float32] [--out FILE]

On CUDA both are timed with CUDA events after a synchronisation (`device.py`); the images stay
on the CPU and each batch moves, as `rrm features` does.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device import Timer, add_device_arguments, configure, device_fields  # noqa: E402


def reference_topk(model, saes, images, *, k: int, batch_size: int = 64):
    heaps = {h: [[] for _ in range(s.cfg.d_sae)] for h, s in saes.items()}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(next(model.parameters()).device)
            _, cache = model.run_with_cache(batch, names_filter=list(saes))
            for hook, sae in saes.items():
                scores = sae.encode(cache[hook]).amax(1).tolist()  # [batch][d_sae]
                for f in range(sae.cfg.d_sae):
                    heap = heaps[hook][f]
                    for i, row in enumerate(scores):
                        # Ties: earlier image first (smaller -index is worse in a min-heap).
                        item = (row[f], -(start + i))
                        if len(heap) < k:
                            heapq.heappush(heap, item)
                        elif item > heap[0]:
                            heapq.heapreplace(heap, item)
    return {h: [[-i for _, i in sorted(heap, reverse=True)] for heap in hs]
            for h, hs in heaps.items()}


def main() -> None:
    import rrm_plugin
    from rrm_plugin.features.activations import collect_top_activations

    p = argparse.ArgumentParser()
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--d-sae", type=int, default=None)
    p.add_argument("--n-images", type=int, default=None)
    add_device_arguments(p)
    args = p.parse_args()
    settings = configure(args)
    torch.set_num_threads(args.threads)
    model = rrm_plugin.load_model("digits-vit", device=settings.device, dtype=settings.dtype)
    saes = {h: s.to(settings.torch_dtype)
            for h, s in rrm_plugin.load_saes("rrm-digits-vit", device=settings.device).items()}
    images = rrm_plugin.load_test_set("digits-vit").images
    if args.d_sae is not None:
        from rrm_plugin.data import train_sampler
        from rrm_plugin.saes.training import new_topk_sae
        from rrm_plugin.zoo.models import DIGITS_DATA

        hook = "blocks.1.hook_resid_post"
        saes = {hook: new_topk_sae(d_in=64, d_sae=args.d_sae, k=64, hook_name=hook,
                                   model_name="digits-vit", seed=0)
                .to(settings.device).to(settings.torch_dtype)}
    if args.n_images is not None:
        images = train_sampler(DIGITS_DATA, seed=5)(args.n_images).images
    times = {"ours": [], "reference": []}
    for _ in range(args.repeats):
        with Timer(settings.device) as timer:
            ours = collect_top_activations(model, saes, images, k=args.k, progress=False)
        times["ours"].append(timer.seconds)
        with Timer(settings.device) as timer:
            ref = reference_topk(model, saes, images, k=args.k)
        times["reference"].append(timer.seconds)
    same = all(ours[h].indices.tolist() == ref[h] for h in saes)
    result = {
        "setting": f"digits-vit, rrm-digits-vit ({sum(s.cfg.d_sae for s in saes.values())} "
                   f"features), {len(images)} images, k={args.k}, {args.threads} threads, "
                   f"torch {torch.__version__}",
        "seconds": times, "median_ours": sorted(times["ours"])[len(times["ours"]) // 2],
        "median_reference": sorted(times["reference"])[len(times["reference"]) // 2],
        "same_top_k": same, **device_fields(settings),
    }
    result["speedup"] = result["median_reference"] / result["median_ours"]
    print(json.dumps(result, indent=2))
    if args.out is not None:
        from rrm_plugin.io import write_json

        write_json(args.out, result)


if __name__ == "__main__":
    main()
