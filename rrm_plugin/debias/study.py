"""The seeded study: per-seed results (`SeedResult.to_json_dict`) summarised across seeds.

Each seed has its own selection pool and validation / test renders, and chooses its own counts;
the spread across seeds therefore covers the selection, not only the test resampling. The summary
is mean +- standard error across seeds (s.e. = sample std / sqrt(seeds)), and per method the
paired difference to the circuit method, seed by seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rrm_plugin.debias.experiment import METHODS, RRM
from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import read_json

STUDY_FORMAT = "rrm-debias-study/2"
METRICS = ("worst_group", "average", "agree", "conflict")
SAME_UNITS = ("same_units_circuit_and_plain", "same_units_edges_and_plain")
"""Seeds in which two methods ablate exactly the same units (older studies lack the second)."""


def mean_se(values: Sequence[float]) -> dict[str, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    n = len(values)
    if n == 0:
        raise RRMUserError("no seeds to summarise")
    mean = sum(values) / n
    se = 0.0 if n == 1 else math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return {"mean": mean, "se": se}


def summarise_seeds(seeds: Sequence[dict[str, Any]], *, config: dict[str, Any],
                    metadata: dict[str, Any]) -> dict[str, Any]:
    """The study's JSON: every seed's dict, and per method mean +- s.e. of each metric, of the
    chosen count, and of the paired worst-group difference to the circuit method."""
    if not seeds:
        raise RRMUserError("no seeds to summarise")
    names = [m for m in METHODS if m in seeds[0]["methods"]]
    if any([m for m in METHODS if m in s["methods"]] != names for s in seeds):
        raise RRMUserError("every seed must evaluate the same methods")
    summary = {}
    for m in names:
        rows = [s["methods"][m] for s in seeds]
        summary[m] = {
            "label": METHODS[m].label, "information": METHODS[m].information,
            **{k: mean_se([r[k] for r in rows]) for k in METRICS},
            "n_units": mean_se([r["n_units"] for r in rows]),
            "worst_group_minus_circuit": mean_se(
                [r["worst_group"] - s["methods"][RRM]["worst_group"]
                 for r, s in zip(rows, seeds, strict=True)]) if RRM in names else None,
        }
    return {"format": STUDY_FORMAT, "config": config, "metadata": metadata,
            "seeds": [s["seed"] for s in seeds], "summary": summary, "per_seed": list(seeds),
            **{key: sum(s[key] for s in seeds) for key in SAME_UNITS if key in seeds[0]}}


def check_study(study: dict[str, Any], *, source: str = "study") -> dict[str, Any]:
    """The study dict, or a clear error for another format (e.g. rrm-debias/1 of older runs)."""
    found = study.get("format") if isinstance(study, dict) else None
    if found != STUDY_FORMAT:
        raise RRMUserError(
            f"{source}: format {found!r} is not {STUDY_FORMAT!r}; it was written by an older "
            "`rrm debias` (one selection pool, bootstrap intervals). Rerun `rrm debias --seeds N "
            "--out DIR` for the seeded study")
    missing = [k for k in ("summary", "per_seed", "seeds") if k not in study]
    if missing:
        raise RRMUserError(f"{source}: missing {missing}")
    return study


def load_study(path: Path) -> dict[str, Any]:
    """Read a `debias.json` written by `rrm debias` (refuses other formats, clearly)."""
    return check_study(read_json(Path(path)), source=str(path))


def _cell(stat: dict[str, float], scale: float = 100, digits: int = 1) -> str:
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['se']:.{digits}f}"


def markdown_table(study: dict[str, Any]) -> str:
    """Mean ± s.e. across seeds: worst-group, balanced average, cue-agreeing and cue-conflicting
    accuracy, units, the paired worst-group difference to the circuit, the information needed."""
    check_study(study)
    n = len(study["seeds"])
    lines = [f"| method ({n} seeds, mean ± s.e.) | worst-group % | average % (balanced) | "
             "cue agrees % | cue conflicts % | units | worst-group minus circuit, points | "
             "information needed |", "|---|---|---|---|---|---|---|---|"]
    for m, row in study["summary"].items():
        diff = row["worst_group_minus_circuit"]
        lines.append(
            f"| {row['label']} | {_cell(row['worst_group'])} | {_cell(row['average'])} | "
            f"{_cell(row['agree'])} | {_cell(row['conflict'])} | "
            f"{_cell(row['n_units'], 1, 1) if row['n_units']['mean'] else '-'} | "
            f"{'-' if m == RRM or diff is None else _cell(diff)} | {row['information']} |")
    return "\n".join(lines)


def per_seed_table(study: dict[str, Any]) -> str:
    """Worst-group accuracy % (units) of every method in every seed."""
    check_study(study)
    names = list(study["summary"])
    lines = ["| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for s in study["per_seed"]:
        cells = []
        for m in names:
            r = s["methods"][m]
            units = f" ({r['n_units']})" if r["unit_kind"] else ""
            cells.append(f"{100 * r['worst_group']:.1f}{units}")
        lines.append(f"| {s['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
