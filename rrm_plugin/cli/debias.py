"""`rrm debias`: the seeded debiasing study (`rrm_plugin.workflows.debias.debias_study_folder`).

Default: the embedded `digits-spurious` benchmark (`digits-vit-spurious`, its release, and the
group-balanced `digits-vit-balanced` as the upper reference), seeds 0..N-1, each with its own
selection pool and renders. `--variant stroke`: the variant whose cue is the digit's stroke hue
(`digits-vit-stroke`, `rrm-digits-vit-stroke`, `digits-vit-stroke-balanced`). `--data FILE`
runs one seed on any model + release: a safetensors file with
`{select,validation,test}_{images,labels,spurious}`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_baselines_arg, add_model_args
from rrm_plugin.cli.output import add_overwrite_arg
from rrm_plugin.errors import RRMUserError

VARIANT_NAMES = ("marker", "stroke")
"""`rrm_plugin.zoo.spurious.VARIANTS` (kept here so that parsing imports no torch; a test
checks they agree)."""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="seeded study: debias a spurious correlation with RRM circuits, "
                                  "against baselines (table, figure, JSON)")
    add_model_args(p, release=False)
    p.add_argument("--release", default=None,
                   help="SAE release (`rrm list`) or a folder written by `rrm train-saes` "
                        "(default: the variant's, rrm-digits-vit-spurious or "
                        "rrm-digits-vit-stroke)")
    p.add_argument("--variant", default=None, choices=VARIANT_NAMES,
                   help="embedded benchmark: marker (a corner square's hue names the class; "
                        "default) or stroke (the digit's own stroke hue does)")
    add_baselines_arg(p)
    p.add_argument("--data", type=Path, default=None,
                   help="safetensors file with select_/validation_/test_ images, labels and "
                        "spurious (the class each image's cue names); default: the embedded "
                        "digits-spurious benchmark")
    p.add_argument("--reference-model", default=None,
                   help="model (name or folder) retrained on group-balanced data, shown as the "
                        "upper reference; default: the variant's (digits-vit-balanced, "
                        "digits-vit-stroke-balanced), none with --data ('none' to skip)")
    p.add_argument("--seeds", type=int, default=5,
                   help="independent seeds 0..N-1 (selection pool, validation and test renders, "
                        "random draws; default 5)")
    p.add_argument("--workers", type=int, default=1,
                   help="seeds run in this many processes of one thread each (default 1)")
    p.add_argument("--pool", type=int, default=4000,
                   help="embedded benchmark: training-stream images drawn for selection per "
                        "seed; their bias-conflicting ones are scored (default 4000)")
    p.add_argument("--counts", type=int, nargs="+", default=None,
                   help="candidate numbers of units to ablate; the validation split picks one "
                        "per method and seed (default 1 2 4 8 12 16 32)")
    p.add_argument("--random-draws", type=int, default=5,
                   help="random latent sets in the random baseline (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--out", type=checks.out_path, default=Path("debias"),
                   help="output folder, written as a unit (default ./debias): debias.json, "
                        "debias.md, debias.png")
    add_overwrite_arg(p)
    p.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and path, before any heavy import; returns the output to lock."""
    from rrm_plugin.cli.output import check_output_directory

    checks.model_args(args)
    checks.existing_file("--baselines", args.baselines, what="baselines file")
    checks.existing_file("--data", args.data, what="data file (safetensors)")
    if args.reference_model is not None and args.reference_model.lower() != "none":
        checks.model_arg("--reference-model", args.reference_model)
    for name in ("seeds", "workers", "pool", "random_draws", "batch_size", "counts"):
        checks.at_least(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.data is not None and args.variant is not None:
        raise RRMUserError("--data brings its own splits and --variant picks an embedded "
                           "benchmark: give one of them")
    if args.data is not None and args.seeds != 1:
        raise RRMUserError("--data gives one fixed set of splits, so seeds would not be "
                           "independent selections: use --seeds 1")
    check_output_directory(args.out, command="debias", overwrite=args.overwrite,
                           inputs=checks.inputs_of(args, "baselines", "data", "model", "release",
                                                   "reference_model"))
    return [args.out]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.debias.experiment import DebiasConfig
    from rrm_plugin.workflows.debias import debias_study_folder

    config = DebiasConfig(**({"counts": tuple(args.counts)} if args.counts else {}),
                          random_draws=args.random_draws, batch_size=args.batch_size)
    study, text = debias_study_folder(
        args.out, seeds=range(args.seeds), variant=args.variant, model=args.model,
        release=args.release,
        reference_model=args.reference_model, data=args.data, baselines=args.baselines,
        pool=args.pool, config=config, workers=args.workers, device=args.device,
        dtype=args.dtype, overwrite=args.overwrite)
    meta, sizes = study["metadata"], study["per_seed"][0]["split_sizes"]
    print(f"{meta['model']} + {meta['release']}; baselines: {meta['baselines']}; data: "
          f"{meta['data']}")
    print(f"seed 0: {sizes['selection_conflicting']} bias-conflicting of {sizes['selection']} "
          f"selection images; validation {sizes['validation']}; test {sizes['test']}")
    print(text)
    print(f"results: {args.out / 'debias.json'}, {args.out / 'debias.md'}, "
          f"{args.out / 'debias.png'}")
    return 0
