"""Which `digits-vit-spurious` recipe, judged on validation renders only (never the test split).

The benchmark needs a model that (1) relies on the cue: accuracy on cue-conflicting validation
images at least 10 points below cue-agreeing ones, and (2) still knows the digit: at least 50% on
cue-conflicting images (an ablation can only recover digit knowledge the model has). The
candidates are the three recipes tried when the benchmark was built (docs/debias.md, "Models"):

- `scratch`: the architecture trained from a fresh initialisation on the biased stream;
- `finetune_all`: all of `digits-vit` fine-tuned on the biased stream;
- `partial` (shipped): `digits-vit`'s patch embedding and blocks 0-1, blocks 2-3, final LayerNorm
  and head re-initialised, all trained on the biased stream.

`partial` is the shipped `digits-vit-spurious`; the other two are retrained here with the same
steps, learning rate and seed (`--train`, about 4.5 min of one CPU thread each). Every model is
evaluated on the validation renders of study seed 0 (`spurious_validation_set()`: 288 digits
never trained on). Writes `recipe_check.json` and prints the table of `recipe_check.md`.

    PYTHONPATH=. python docs/debias/recipe_check.py --train --out docs/debias

`--variant stroke` applies the same rule to the stroke-hue variant's shipped models
(`digits-vit-stroke`, the `partial` recipe on the variant's stream, and its balanced reference) on
the variant's validation renders, writing `recipe_check_stroke.json` / `.md`:

    PYTHONPATH=. python docs/debias/recipe_check.py --variant stroke --out docs/debias
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rrm_plugin.data.spurious import spurious_train_sampler, spurious_validation_set
from rrm_plugin.zoo.models import load_model
from rrm_plugin.zoo.spurious import SPURIOUS_BENCHMARK, SPURIOUS_TRAINING, VARIANTS
from rrm_plugin.zoo.train_model import train_vit

GAP = 0.10
KNOWLEDGE = 0.50


def evaluate(model, benchmark=SPURIOUS_BENCHMARK) -> dict[str, float]:
    split = spurious_validation_set(benchmark)
    with torch.no_grad():
        correct = torch.cat([model(split.images[i:i + 256]).argmax(-1)
                             for i in range(0, len(split.images), 256)]) == split.labels
    agree, conflict = correct[split.agrees].float().mean(), correct[~split.agrees].float().mean()
    verdict = bool(agree - conflict >= GAP and conflict >= KNOWLEDGE)
    return {"agree": float(agree), "conflict": float(conflict), "meets_both": verdict}


def candidates(train: bool) -> dict:
    models = {"partial": load_model("digits-vit-spurious")}
    if train:
        sample = spurious_train_sampler(SPURIOUS_BENCHMARK, seed=SPURIOUS_TRAINING.seed)
        models["scratch"] = train_vit(SPURIOUS_TRAINING, name="digits-vit-spurious",
                                      sample=sample, progress=False)
        sample = spurious_train_sampler(SPURIOUS_BENCHMARK, seed=SPURIOUS_TRAINING.seed)
        models["finetune_all"] = train_vit(SPURIOUS_TRAINING, name="digits-vit-spurious",
                                           sample=sample, progress=False,
                                           init=load_model("digits-vit"))
    models["balanced (reference, not a candidate)"] = load_model("digits-vit-balanced")
    return models


def variant_candidates(name: str) -> dict:
    v = VARIANTS[name]
    return {f"partial ({v.model})": load_model(v.model),
            f"balanced ({v.reference_model}, reference, not a candidate)":
                load_model(v.reference_model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="retrain the two trial recipes")
    parser.add_argument("--variant", choices=list(VARIANTS), default="marker")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.variant == "marker":
        models, suffix = candidates(args.train), ""
    else:
        models, suffix = variant_candidates(args.variant), f"_{args.variant}"
    benchmark = VARIANTS[args.variant].config
    results = {name: evaluate(model, benchmark) for name, model in models.items()}
    lines = ["| recipe | validation: cue agrees % | cue conflicts % | relies on the cue "
             f"(gap >= {100 * GAP:.0f} points) and knows the digit (>= {100 * KNOWLEDGE:.0f}%) |",
             "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['agree']:.1f} | {100 * r['conflict']:.1f} | "
                     f"{'yes' if r['meets_both'] else 'no'} |")
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        (args.out / f"recipe_check{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / f"recipe_check{suffix}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
