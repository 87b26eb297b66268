"""`rrm debias`: the seeded debiasing study, from model names to a results folder.

Every seed loads the workspace, draws its own splits (`spurious_seed_splits`: a fresh selection
pool and fresh validation / test renders of the variant's benchmark, `marker` or `stroke`; a
`--data` file gives one fixed set), runs
`run_debias`, and returns its JSON dict; seeds run in `workers` processes of one torch thread
each. The folder gets `debias.json` (format `rrm-debias-study/2`), `debias.md`, `debias.png`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rrm_plugin.data.spurious import SpuriousConfig, spurious_seed_splits
from rrm_plugin.debias.data import SpuriousSplit, from_batch
from rrm_plugin.debias.experiment import DebiasConfig, run_debias
from rrm_plugin.debias.plot import plot_debias
from rrm_plugin.debias.study import markdown_table, per_seed_table, summarise_seeds
from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import read_tensors, write_json, write_text
from rrm_plugin.runs.output import output_directory
from rrm_plugin.threads import torch_threads
from rrm_plugin.workflows.baselines import resolve_baselines
from rrm_plugin.workflows.workspace import load_workspace
from rrm_plugin.zoo.spurious import variant as find_variant

SPLITS = ("select", "validation", "test")
FIELDS = ("images", "labels", "spurious")


@dataclass(frozen=True)
class StudySettings:
    """What every seed of a study loads (picklable: it travels to the worker processes)."""

    model: str | None
    release: str | None
    reference_model: str | None
    data: Path | None
    baselines: Path | None
    pool: int
    device: str
    dtype: str | None
    config: DebiasConfig
    threads: int = 1
    benchmark: SpuriousConfig = SpuriousConfig()
    """The embedded benchmark the seeds render (unused with `data`)."""


def load_data_file(path: Path) -> list[SpuriousSplit]:
    """(selection, validation, test) from a safetensors file with
    `{select,validation,test}_{images,labels,spurious}`."""
    tensors = read_tensors(Path(path), what="data file")
    wanted = [f"{s}_{f}" for s in SPLITS for f in FIELDS]
    missing = [k for k in wanted if k not in tensors]
    if missing:
        raise RRMUserError(f"--data {path}: missing tensors {missing}; expected {wanted}")
    return [SpuriousSplit(*(tensors[f"{s}_{f}"] for f in FIELDS)) for s in SPLITS]


def run_seed(seed: int, settings: StudySettings) -> dict[str, Any]:
    """One seed of the study as its JSON dict (module doc)."""
    with torch_threads(settings.threads):
        ws = load_workspace(model=settings.model, release=settings.release,
                            device=settings.device, dtype=settings.dtype)
        if settings.data is not None:
            splits = load_data_file(settings.data)
        else:
            splits = [from_batch(b) for b in spurious_seed_splits(seed, pool=settings.pool,
                                                                  cfg=settings.benchmark)]
        selection, validation, test = (s._replace(images=s.images.to(settings.device))
                                       for s in splits)
        baselines = resolve_baselines(ws.model, ws.saes, images=selection.images,
                                      path=settings.baselines)
        reference = None
        if settings.reference_model is not None:
            reference = load_workspace(model=settings.reference_model, release=None,
                                       device=settings.device, dtype=settings.dtype,
                                       with_saes=False).model
        result = run_debias(ws.model, ws.saes, selection=selection, validation=validation,
                            test=test, baselines=baselines.baselines,
                            config=replace(settings.config, seed=seed),
                            reference_model=reference)
        return {**result.to_json_dict(), "model": ws.model_name, "release": ws.release,
                "baselines": baselines.description}


def _run_seed_job(job: tuple[int, StudySettings]) -> dict[str, Any]:
    return run_seed(*job)


def debias_study(seeds: Sequence[int], settings: StudySettings, *, workers: int = 1,
                 progress: bool = True) -> dict[str, Any]:
    """Every seed (in `workers` processes), summarised (`summarise_seeds`)."""
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise RRMUserError(f"seeds must be distinct non-negative integers, got {seeds}")
    if settings.data is not None and len(seeds) > 1:
        raise RRMUserError("a --data file gives one fixed set of splits, so its seeds would not "
                           "be independent selections; run one seed (--seeds 1)")
    if workers < 1:
        raise RRMUserError(f"workers must be at least 1, got {workers}")
    jobs = [(s, settings) for s in seeds]
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_run_seed_job(job))
            if progress:
                print(f"seed {job[0]} done", flush=True)
    else:  # spawn: fresh interpreters, no inherited torch thread pools
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = list(pool.map(_run_seed_job, jobs))
    metadata = {k: results[0][k] for k in ("model", "release", "baselines")}
    embedded = f"digits-spurious (embedded, cue: {settings.benchmark.cue})"
    metadata |= {"data": str(settings.data) if settings.data else embedded,
                 "reference_model": settings.reference_model, "pool": settings.pool}
    return summarise_seeds(results, config=asdict(settings.config), metadata=metadata)


def debias_study_folder(
    out: str | Path,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    variant: str | None = None,
    model: str | None = None,
    release: str | None = None,
    reference_model: str | None = None,
    data: str | Path | None = None,
    baselines: str | Path | None = None,
    pool: int = 4000,
    config: DebiasConfig | None = None,
    workers: int = 1,
    device: str = "cpu",
    dtype: str | None = None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], str]:
    """Run the study and write `out` as a unit (debias.json, debias.md, debias.png).

    `variant` picks the embedded benchmark (`rrm_plugin.zoo.spurious.VARIANTS`: `marker`, the
    default, or `stroke`); `release` and `reference_model` default to the variant's
    (rrm-digits-vit-spurious and digits-vit-balanced for `marker`), no reference for a `data`
    file ('none' skips it). Returns the study and the markdown written."""
    if variant is not None and data is not None:
        raise RRMUserError("a --data file brings its own splits; --variant picks an embedded "
                           "benchmark: give one of them")
    chosen = find_variant(variant or "marker")
    release = chosen.release if release is None else release
    if reference_model is None and data is None:
        reference_model = chosen.reference_model
    if reference_model is not None and reference_model.lower() == "none":
        reference_model = None
    settings = StudySettings(model=model, release=release, reference_model=reference_model,
                             data=Path(data) if data else None,
                             baselines=Path(baselines) if baselines else None, pool=pool,
                             device=device, dtype=dtype, config=config or DebiasConfig(),
                             benchmark=chosen.config)
    study = debias_study(seeds, settings, workers=workers)
    text = markdown_table(study) + "\n\nWorst-group accuracy % per seed (units ablated):\n\n" + \
        per_seed_table(study) + "\n"
    with output_directory(out, command="debias", overwrite=overwrite) as tmp:
        write_json(tmp / "debias.json", study)
        write_text(tmp / "debias.md", text)
        plot_debias(study, tmp / "debias.png")
    return study, text
