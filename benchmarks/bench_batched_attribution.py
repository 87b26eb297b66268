"""Batched attribution (issue 11 section 1): images/s for a batch of B images vs one at a time.

Setting: the ViT-B/16-shaped random HookedViT and random TopK SAEs of the paper's sizes of
`bench_attribution.py` (its `setup`), at `--image-size` pixels (default 112 -> 50 tokens, a reduced
setting so that 16 images per path fit a CPU run), median baselines over 4 random images, 16 random
images, adjusted logit of the predicted class, feature granularity, full graphs (all 10 pairs).

In one process, same model, SAEs and images, for each B in `--batches`:

- `one_at_a_time`: `attribute(model, saes, image[None])` for each image in turn (timed per image,
  once for the largest B; B images cost the sum of the first B times);
- `batched_forward`: `attribute(model, saes, images[:B])` with the default engine (one forward +
  backward for the batch, the edge engine one image at a time);
- `batched_engine`: the same with `EngineConfig(images_per_step=B)` (the engine also takes the B
  images together per layer pair).

Each batched graph is compared with the one-at-a-time graph of the same image: max over every
graph tensor of max |batched - single| / max |single|.

    python benchmarks/bench_batched_attribution.py [--batches 1 4 16] [--threads 2]
        [--device cuda] [--dtype float32] [--tf32]

On CUDA each attribution is timed with CUDA events after a synchronisation (`device.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import PAPER_SAES, setup  # noqa: E402
from device import Timer, add_device_arguments, configure, device_fields  # noqa: E402


def max_rel_diff(graphs, singles) -> float:
    worst = 0.0
    for g, s in zip(graphs, singles, strict=True):
        tg, ts = g._tensors(), s._tensors()
        assert tg.keys() == ts.keys()
        for name, ref in ts.items():
            if tg[name].shape != ref.shape:
                return float("inf")
            if ref.is_floating_point():
                scale = float(ref.abs().max().clamp(min=1e-30))
                worst = max(worst, float((tg[name] - ref).abs().max()) / scale)
            elif not torch.equal(tg[name], ref):
                return float("inf")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=112)
    add_device_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    settings = configure(args)

    from rrm_plugin.attribution.build import attribute
    from rrm_plugin.attribution.engine import EngineConfig

    model, saes, baselines, _ = setup(args.threads, args.image_size, settings)
    n = max(args.batches)
    size = args.image_size
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(
        settings.device, settings.torch_dtype)
    print(f"ViT-B/16-shaped random HookedViT ({size} px, {(size // 16) ** 2 + 1} tokens), random "
          f"TopK SAEs {PAPER_SAES}, feature graphs of all 10 pairs, {args.threads} threads, "
          f"torch {torch.__version__}, {settings.device} {settings.dtype}")

    def timed(fn):
        with Timer(settings.device) as timer:
            out = fn()
        return out, timer.seconds

    attribute(model, saes, images[:1], baselines=baselines)  # warm-up
    singles, single_times = [], []
    for b in range(n):
        (graph,), seconds = timed(lambda b=b: attribute(model, saes, images[b:b + 1],
                                                        baselines=baselines))
        singles.append(graph)
        single_times.append(seconds)
    report: dict = {"image_size": size, "threads": args.threads, "single_seconds": single_times,
                    **device_fields(settings), "batches": {}}
    for batch in args.batches:
        one = sum(single_times[:batch])
        row = {"one_at_a_time_images_per_s": batch / one}
        for name, engine in (("batched_forward", EngineConfig()),
                             ("batched_engine", EngineConfig(images_per_step=batch))):
            graphs, seconds = timed(lambda e=engine, x=images[:batch]: attribute(
                model, saes, x, baselines=baselines, engine=e))
            row[f"{name}_images_per_s"] = batch / seconds
            row[f"{name}_speedup"] = one / seconds
            row[f"{name}_max_rel_diff"] = max_rel_diff(graphs, singles[:batch])
        report["batches"][batch] = row
        print(f"B={batch:2d}: one at a time {row['one_at_a_time_images_per_s']:.3f} images/s; "
              f"batched forward {row['batched_forward_images_per_s']:.3f} images/s "
              f"({row['batched_forward_speedup']:.2f}x, max rel diff "
              f"{row['batched_forward_max_rel_diff']:.1e}); batched forward + engine "
              f"{row['batched_engine_images_per_s']:.3f} images/s "
              f"({row['batched_engine_speedup']:.2f}x, max rel diff "
              f"{row['batched_engine_max_rel_diff']:.1e})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
