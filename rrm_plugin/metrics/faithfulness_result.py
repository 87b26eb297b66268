"""Faithfulness results: areas under the insertion / deletion curves, their standard errors and
paired margins, and the result object with its JSON and Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import scipy.integrate
from jaxtyping import Float

from rrm_plugin.errors import RRMUserError

if TYPE_CHECKING:  # the result only stores the run's settings
    from rrm_plugin.metrics.faithfulness import FaithfulnessConfig

QUANTITIES: tuple[str, ...] = ("logit", "adjusted_logit", "probability", "accuracy", "node_count")
SCORED: tuple[str, ...] = ("logit", "adjusted_logit", "probability", "accuracy")
MODES: tuple[str, ...] = ("insertion", "deletion")
AXES: tuple[str, ...] = ("index", "p", "nodes")
HEADLINE_AXIS = "nodes"
REFERENCE = "rrm"  # margins are this method against each other one


# ---- areas under the curve -------------------------------------------------------------------


class Estimate(NamedTuple):
    """A mean over images and its standard error (sample std / sqrt(n))."""

    mean: float
    se: float


class Margin(NamedTuple):
    """`method` against `other`, from paired per-image AUCs."""

    difference: Estimate
    """Mean of the per-image differences and its standard error."""
    ratio: Estimate
    """mean(method) / mean(other); standard error by the delta method on the paired AUCs."""


def auc(values: Sequence[float], *, x: Sequence[float] | None = None) -> float:
    """Trapezoidal area under `values` over `x`, divided by the range of `x` (its mean height).

    Without `x`, the points are evenly spaced. A zero range (one point, or x constant) gives the
    plain mean.
    """
    y = np.asarray(values, dtype=np.float64)
    return float(image_aucs(y[None], x=np.linspace(0, 1, len(y)) if x is None else x)[0])


def image_aucs(
    curves: Float[np.ndarray, "image sweep"], *, x: Float[np.ndarray, " sweep"]
) -> Float[np.ndarray, " image"]:
    """`auc` of every row of `curves` over the shared axis `x`."""
    y, x = np.asarray(curves, dtype=np.float64), np.asarray(x, dtype=np.float64)
    if y.shape[-1] != len(x):
        raise RRMUserError(f"curves have {y.shape[-1]} points but the axis has {len(x)}")
    if len(x) == 0:
        return np.full(len(y), np.nan)
    span = x[-1] - x[0]
    if len(x) < 2 or span == 0:
        return y.mean(-1)
    return scipy.integrate.trapezoid(y, x, axis=-1) / span


def axis_positions(
    axis: str, *, sweep: Sequence[float], node_counts: Float[np.ndarray, "image sweep"],
    node_total: int,
) -> Float[np.ndarray, " sweep"]:
    """x of each sweep point on `axis` (`AXES`); `nodes` uses the mean count over images."""
    if axis == "index":
        return np.linspace(0.0, 1.0, len(sweep))
    if axis == "p":
        return np.asarray(sweep, dtype=np.float64)
    if axis == "nodes":
        # Shared by all images, so the mean of per-image AUCs is the AUC of the mean curve.
        return np.asarray(node_counts, dtype=np.float64).mean(0) / node_total
    raise RRMUserError(f"unknown AUC axis {axis!r}; expected one of {list(AXES)}")


def mean_se(values: Float[np.ndarray, " n"]) -> Estimate:
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return Estimate(float(values.mean()), float(se))


def paired_margin(a: Float[np.ndarray, " n"], b: Float[np.ndarray, " n"]) -> Margin:
    """Difference and ratio of paired per-image values `a` (method) and `b` (other)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ratio = a.mean() / b.mean()
    # Delta method: R = mean(a) / mean(b) is, to first order, R + mean(a - R b) / mean(b).
    linearised_ratio = (a - ratio * b) / b.mean()
    return Margin(mean_se(a - b), Estimate(float(ratio), mean_se(linearised_ratio).se))


@dataclass
class FaithfulnessResult:
    config: FaithfulnessConfig
    image_indices: list[int]
    image_curves: dict[str, dict[str, dict[str, Float[np.ndarray, "image sweep"]]]]
    """`image_curves[method][mode][quantity]`: every image's curve, one column per sweep point."""
    node_totals: dict[str, int]
    """Nodes of the masked layers per method (the `nodes` axis divides by it)."""
    influence_circuit: dict[str, float] = field(default_factory=dict)
    """circuit-tracer pruning (0.8 / 0.98) of the RRM graphs: means over images."""

    @property
    def methods(self) -> list[str]:
        return list(self.image_curves)

    @property
    def curves(self) -> dict[str, dict[str, dict[str, list[float]]]]:
        """`curves[method][mode][quantity]`: mean over images at each sweep point."""
        return {m: {mode: {q: v.mean(0).tolist() for q, v in qs.items()}
                    for mode, qs in modes.items()} for m, modes in self.image_curves.items()}

    def axis(self, method: str, mode: str, axis: str) -> Float[np.ndarray, " sweep"]:
        return axis_positions(axis, sweep=self.config.sweep,
                              node_counts=self.image_curves[method][mode]["node_count"],
                              node_total=self.node_totals[method])

    def image_auc(self, method: str, mode: str, quantity: str, *, axis: str = HEADLINE_AXIS
                  ) -> Float[np.ndarray, " image"]:
        return image_aucs(self.image_curves[method][mode][quantity],
                          x=self.axis(method, mode, axis))

    def auc(self, method: str, mode: str, quantity: str, *, axis: str = HEADLINE_AXIS
            ) -> Estimate:
        """Mean per-image AUC (= the AUC of the mean curve) and its standard error."""
        return mean_se(self.image_auc(method, mode, quantity, axis=axis))

    def margin(self, method: str, other: str, *, mode: str = "insertion",
               quantity: str = "adjusted_logit", axis: str = HEADLINE_AXIS) -> Margin:
        """`method` against `other` on paired per-image AUCs."""
        return paired_margin(self.image_auc(method, mode, quantity, axis=axis),
                             self.image_auc(other, mode, quantity, axis=axis))

    def margins(self) -> list[str]:
        return [m for m in self.methods if m != REFERENCE] if REFERENCE in self.methods else []

    def to_json_dict(self) -> dict[str, Any]:
        methods = self.methods
        return {
            "config": asdict(self.config), "n_images": len(self.image_indices),
            "image_indices": self.image_indices, "headline_axis": HEADLINE_AXIS,
            "node_totals": self.node_totals,
            "axes": {axis: {m: {mode: self.axis(m, mode, axis).tolist() for mode in MODES}
                            for m in methods} for axis in AXES},
            "curves": self.curves,
            "image_curves": {m: {mode: {q: v.tolist() for q, v in qs.items()}
                                 for mode, qs in modes.items()}
                             for m, modes in self.image_curves.items()},
            "auc": {axis: {m: {mode: {q: self.auc(m, mode, q, axis=axis)._asdict()
                                      for q in SCORED} for mode in MODES}
                           for m in methods} for axis in AXES},
            "margins": {
                "reference": REFERENCE,
                "ratio_se": "delta method on the paired per-image AUCs",
                "vs": {other: {axis: {mode: {q: _margin_dict(self.margin(
                    REFERENCE, other, mode=mode, quantity=q, axis=axis)) for q in SCORED}
                    for mode in MODES} for axis in AXES} for other in self.margins()},
            },
            "influence_circuit": self.influence_circuit,
        }

    def table(self, quantity: str = "adjusted_logit") -> str:
        """Markdown tables: AUCs on every axis, other quantities on the headline, margins."""
        name = quantity.replace("_", " ")
        head = ["method"] + [f"{mode[:3]}. AUC {name} ({axis})"
                             for mode in MODES for axis in AXES]
        lines = [_row(head), "|---" * len(head) + "|"]
        for m in self.methods:
            lines.append(_row([m] + [_fmt(self.auc(m, mode, quantity, axis=axis))
                                     for mode in MODES for axis in AXES]))
        others = [q for q in SCORED if q != quantity]
        head = ["method"] + [f"{mode[:3]}. AUC {q.replace('_', ' ')} ({HEADLINE_AXIS})"
                             for mode in MODES for q in others]
        lines += ["", _row(head), "|---" * len(head) + "|"]
        for m in self.methods:
            lines.append(_row([m] + [_fmt(self.auc(m, mode, q)) for mode in MODES
                                     for q in others]))
        if self.margins():
            head = [f"{REFERENCE} vs", "axis"] + [f"{mode[:3]}. {what}" for mode in MODES
                                                for what in ("difference", "ratio")]
            lines += ["", f"Margins on the {name} AUC (mean +- s.e. over paired images; ratio "
                      "s.e. by the delta method):", "", _row(head), "|---" * len(head) + "|"]
            for other in self.margins():
                for axis in AXES:
                    cells = []
                    for mode in MODES:
                        margin = self.margin(REFERENCE, other, mode=mode, quantity=quantity,
                                             axis=axis)
                        cells += [_fmt(margin.difference, sign=True), _fmt(margin.ratio)]
                    lines.append(_row([other, axis] + cells))
        return "\n".join(lines)


def _margin_dict(margin: Margin) -> dict[str, dict[str, float]]:
    return {"difference": margin.difference._asdict(), "ratio": margin.ratio._asdict()}


def _fmt(estimate: Estimate, *, sign: bool = False) -> str:
    return f"{estimate.mean:{'+' if sign else ''}.3f} +- {estimate.se:.3f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
