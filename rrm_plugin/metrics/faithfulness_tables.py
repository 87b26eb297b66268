"""The faithfulness tables of docs/circuits.md, computed from a run's per-image records
(`scripts/faithfulness_tables.py` prints them; tests/metrics/test_faithfulness_tables.py checks
that the docs hold exactly these tables for the shipped run)."""

from __future__ import annotations

from collections.abc import Sequence

from rrm_plugin.errors import RRMUserError
from rrm_plugin.metrics.faithfulness_result import (
    HEADLINE_AXIS,
    MODES,
    REFERENCE,
    Estimate,
    FaithfulnessResult,
    mean_se,
)

LABELS = {
    "rrm": ("RRM (node rule)", "RRM (node rule)"),
    "rrm_edge": ("RRM (edge rule)", "RRM (edge rule)"),
    "non_linearised": ("without linearisation", "without linearisation"),
    "random": ("random latents, RRM's counts (`random`)", "random latents, RRM's counts"),
    "random_authors": ("random latents, authors' rule (`random_authors`)",
                       "random latents, authors' rule"),
    "neuron": ("neurons (residual dims)", "neurons (residual dims)"),
}
"""Row names: (first table, second table)."""
MARGIN_ORDER = ("random", "random_authors", "neuron", "non_linearised", "rrm_edge")
MARGIN_LABELS = {"random": "random, RRM's counts", "random_authors": "random, authors' rule",
                 "neuron": "neurons", "non_linearised": "without linearisation",
                 "rrm_edge": "RRM (edge rule)"}
AXIS_ORDER = ("nodes", "p", "index")
_MODE = {"insertion": "ins.", "deletion": "del."}
# The block of a docs page the tables fill.
BEGIN = "<!-- faithfulness tables: scripts/faithfulness_tables.py -->"
END = "<!-- end of faithfulness tables -->"


def replace_tables(text: str, tables: str) -> str:
    """`text` with the block between `BEGIN` and `END` replaced by `tables`."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise RRMUserError(f"expected one {BEGIN!r} ... {END!r} block")
    head, rest = text.split(BEGIN)
    return f"{head}{BEGIN}\n\n{tables}\n\n{END}{rest.split(END)[1]}"


def tables_in(text: str) -> str:
    """The tables between the markers of `text`."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise RRMUserError(f"expected one {BEGIN!r} ... {END!r} block")
    return text.split(BEGIN)[1].split(END)[0].strip()


def docs_tables(result: FaithfulnessResult) -> str:
    """The markdown tables of docs/circuits.md for `result` (every method of the default run)."""
    missing = [m for m in LABELS if m not in result.methods]
    if missing:
        raise RRMUserError(f"the docs' tables need every method; missing {missing}")
    return "\n\n".join([auc_table(result), quantity_table(result), margin_table(result),
                        random_rules_table(result), influence_table(result)])


def auc_table(result: FaithfulnessResult) -> str:
    """Adjusted-logit AUC of every method on every axis; the best of each column in bold."""
    columns = [(mode, axis) for mode in MODES for axis in AXIS_ORDER]
    cells = {c: {m: result.auc(m, c[0], "adjusted_logit", axis=c[1]) for m in LABELS}
             for c in columns}
    head = ["method (adjusted logit AUC)"] + [f"{_MODE[mode]} {axis}" for mode, axis in columns]
    rows = [[LABELS[m][0]] + [_best(cells[c], m, c[0], 2) for c in columns] for m in LABELS]
    return _table(head, rows)


def quantity_table(result: FaithfulnessResult) -> str:
    """Probability and accuracy AUCs on the headline axis; the best of each column in bold."""
    columns = [(mode, q) for mode in MODES for q in ("probability", "accuracy")]
    cells = {c: {m: result.auc(m, c[0], c[1]) for m in LABELS} for c in columns}
    head = [f"method ({HEADLINE_AXIS[:-1]} axis)"] + [f"{_MODE[mode]} {q}" for mode, q in columns]
    rows = [[LABELS[m][1]] + [_best(cells[c], m, c[0], 3) for c in columns] for m in LABELS]
    return _table(head, rows)


def margin_table(result: FaithfulnessResult) -> str:
    """RRM (node rule) against each other method from the paired per-image AUCs: difference and
    ratio of the adjusted-logit AUC, and the deletion ratio of the probability AUC (the
    adjusted-logit deletion AUCs change sign, so their ratio means nothing)."""
    head = ["RRM vs", "axis", "ins. difference", "ins. ratio", "del. difference",
            "del. ratio (probability)"]
    rows = []
    for other in MARGIN_ORDER:
        for i, axis in enumerate(AXIS_ORDER):
            ins = result.margin(REFERENCE, other, mode="insertion", axis=axis)
            dele = result.margin(REFERENCE, other, mode="deletion", axis=axis)
            prob = result.margin(REFERENCE, other, mode="deletion", quantity="probability",
                                 axis=axis)
            rows.append([MARGIN_LABELS[other] if i == 0 else "", axis,
                         _fmt(ins.difference, 2, sign=True), _ratio(ins.ratio),
                         _fmt(dele.difference, 2, sign=True), _fmt(prob.ratio, 3)])
    return _table(head, rows)


def random_rules_table(result: FaithfulnessResult) -> str:
    """The two random rules on each axis: insertion adjusted-logit AUCs and their paired
    difference (`random - random_authors`)."""
    head = ["axis", "ins. `random`", "ins. `random_authors`", "difference"]
    rows = []
    for axis in AXIS_ORDER:
        ours = result.image_auc("random", "insertion", "adjusted_logit", axis=axis)
        authors = result.image_auc("random_authors", "insertion", "adjusted_logit", axis=axis)
        rows.append([axis, _fmt(mean_se(ours), 2), _fmt(mean_se(authors), 2),
                     _fmt(mean_se(ours - authors), 2, sign=True)])
    return _table(head, rows)


def influence_table(result: FaithfulnessResult) -> str:
    """circuit-tracer influence pruning (0.8 / 0.98) of the RRM graphs: means over images."""
    stats = result.influence_circuit
    if not stats:
        raise RRMUserError("the run holds no influence-pruned circuits (method rrm_edge)")
    head = ["influence-pruned circuits (mean over images)", "value"]
    rows = [[name, f"{stats[name]:.2f}" if name != "nodes" else f"{stats[name]:.1f}"]
            for name in sorted(stats)]
    return _table(head, rows)


def _best(cells: dict[str, Estimate], method: str, mode: str, digits: int) -> str:
    pick = max if mode == "insertion" else min
    best = pick(cells, key=lambda m: cells[m].mean)
    text = _fmt(cells[method], digits)
    return f"**{text}**" if method == best else text


def _fmt(estimate: Estimate, digits: int, *, sign: bool = False) -> str:
    mean = f"{estimate.mean:{'+' if sign else ''}.{digits}f}"
    return f"{mean} ± {estimate.se:.{digits}f}"


def _ratio(estimate: Estimate) -> str:
    # A ratio whose standard error reaches 0.5 (random insertion AUCs near zero on the index
    # axis) is shown to one decimal: the second would be noise.
    return _fmt(estimate, 1 if estimate.se >= 0.5 else 2)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return "\n".join([line(head), "|" + "---|" * len(head), *map(line, rows)])
