"""`rrm debias`: remove a spurious cue's features found by RRM circuits; compare with baselines.

Default: the embedded `digits-spurious` benchmark (`digits-vit-spurious`, its release, and the
group-balanced `digits-vit-balanced` as the upper reference). `--data FILE` runs it on any
model + release: a safetensors file with `{select,validation,test}_{images,labels,spurious}`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rrm_plugin.cli import checks
from rrm_plugin.cli.common import add_baselines_arg, add_model_args
from rrm_plugin.cli.output import add_overwrite_arg
from rrm_plugin.errors import RRMUserError

SPLITS = ("select", "validation", "test")
FIELDS = ("images", "labels", "spurious")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="debias a spurious correlation with RRM circuits, against "
                                  "baselines (table, figure, JSON)")
    add_model_args(p, default_release="rrm-digits-vit-spurious")
    add_baselines_arg(p)
    p.add_argument("--data", type=Path, default=None,
                   help="safetensors file with select_/validation_/test_ images, labels and "
                        "spurious (the class each image's cue names); default: the embedded "
                        "digits-spurious benchmark")
    p.add_argument("--reference-model", default=None,
                   help="model (name or folder) retrained on group-balanced data, shown as the "
                        "upper reference; default: digits-vit-balanced for the embedded "
                        "benchmark, none otherwise ('none' to skip)")
    p.add_argument("--pool", type=int, default=4000,
                   help="embedded benchmark: training-stream images drawn for selection; their "
                        "bias-conflicting ones are scored (default 4000)")
    p.add_argument("--counts", type=int, nargs="+", default=None,
                   help="candidate numbers of units to ablate; the validation split picks one "
                        "per method (default 1 2 3 4 6 8 12 16 24 32 48 64)")
    p.add_argument("--random-draws", type=int, default=20,
                   help="random feature sets in the random baseline (default 20)")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="bootstrap resamples of the test images (default 2000)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the selection pool, random baseline and bootstrap (default 0)")
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
    for name in ("pool", "random_draws", "bootstrap", "batch_size", "counts"):
        checks.at_least(f"--{name.replace('_', '-')}", getattr(args, name))
    check_output_directory(args.out, command="debias", overwrite=args.overwrite,
                           inputs=checks.inputs_of(args, "baselines", "data", "model", "release",
                                                   "reference_model"))
    return [args.out]


def _load_data(path: Path):
    from rrm_plugin.debias.data import SpuriousSplit
    from rrm_plugin.io import read_tensors

    tensors = read_tensors(path, what="data file")
    wanted = [f"{s}_{f}" for s in SPLITS for f in FIELDS]
    missing = [k for k in wanted if k not in tensors]
    if missing:
        raise RRMUserError(f"--data {path}: missing tensors {missing}; expected {wanted}")
    return [SpuriousSplit(*(tensors[f"{s}_{f}"] for f in FIELDS)) for s in SPLITS]


def _embedded_data(pool: int, seed: int):
    from rrm_plugin.data.spurious import (
        spurious_test_set,
        spurious_train_sampler,
        spurious_validation_set,
    )
    from rrm_plugin.debias.data import from_batch

    # The selection pool comes from the training stream (a seed the recipes never use for it).
    selection = spurious_train_sampler(seed=10_000 + seed)(pool)
    return [from_batch(b) for b in (selection, spurious_validation_set(), spurious_test_set())]


def run(args: argparse.Namespace) -> int:
    from rrm_plugin.cli.common import workspace_of
    from rrm_plugin.cli.output import output_directory
    from rrm_plugin.debias.experiment import DebiasConfig, run_debias
    from rrm_plugin.debias.plot import plot_debias
    from rrm_plugin.io import write_json, write_text
    from rrm_plugin.workflows.baselines import resolve_baselines
    from rrm_plugin.workflows.workspace import load_workspace

    config = DebiasConfig(**({"counts": tuple(args.counts)} if args.counts else {}),
                          random_draws=args.random_draws, n_bootstrap=args.bootstrap,
                          seed=args.seed, batch_size=args.batch_size)
    ws = workspace_of(args)
    if args.data is not None:
        selection, validation, test = _load_data(args.data)
        reference_name = args.reference_model
    else:
        selection, validation, test = _embedded_data(args.pool, args.seed)
        reference_name = args.reference_model or "digits-vit-balanced"
    selection, validation, test = (
        s._replace(images=s.images.to(args.device)) for s in (selection, validation, test))
    baselines, how, _ = resolve_baselines(ws.model, ws.saes, images=selection.images,
                                       path=args.baselines)
    reference = None
    if reference_name is not None and reference_name.lower() != "none":
        reference = load_workspace(model=reference_name, release=None, device=args.device,
                                   dtype=args.dtype, with_saes=False).model
    result = run_debias(ws.model, ws.saes, selection=selection, validation=validation,
                        test=test, baselines=baselines, config=config, reference_model=reference,
                        progress=True)
    summary = result.to_json_dict()
    summary["metadata"] = {"model": ws.model_name, "release": ws.release, "baselines": how,
                           "data": str(args.data) if args.data else "digits-spurious (embedded)",
                           "reference_model": reference_name if reference else None}
    table = result.markdown_table()
    with output_directory(args.out, command="debias", overwrite=args.overwrite) as tmp:
        write_json(tmp / "debias.json", summary)
        write_text(tmp / "debias.md", table + "\n")
        plot_debias(summary, tmp / "debias.png")
    sizes = summary["split_sizes"]
    print(f"{ws.model_name} + {ws.release}; baselines: {how}")
    print(f"selection: {sizes['selection_conflicting']} bias-conflicting of "
          f"{sizes['selection']} training images; validation {sizes['validation']}; test "
          f"{sizes['test']} (group sizes in debias.json)")
    print(table)
    print(f"results: {args.out / 'debias.json'}, {args.out / 'debias.md'}, "
          f"{args.out / 'debias.png'}")
    return 0
