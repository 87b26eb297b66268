"""Probe geometry: bars, arcs and their limit (the straight level of the curve family)."""

import numpy as np
import pytest
import torch

from rrm_plugin.features.probes import BOWS, CURVATURES, arc_alpha, bar_alpha, probe_families
from rrm_plugin.zoo.models import DIGITS_DATA

SIZE = 24
CENTRE = np.array([[12.3, 11.6]])  # off the pixel grid: no pixel sits exactly on a stroke's end


def principal_axis_deg(weight: np.ndarray) -> float:
    """Orientation (deg, mod 180) of the long axis of a 2-D mass, from its second moments."""
    yy, xx = np.meshgrid(np.arange(weight.shape[0]) + 0.5, np.arange(weight.shape[1]) + 0.5,
                         indexing="ij")
    w = weight / weight.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    cxx, cyy = (w * (xx - mx) ** 2).sum(), (w * (yy - my) ** 2).sum()
    cxy = (w * (xx - mx) * (yy - my)).sum()
    return float(np.rad2deg(0.5 * np.arctan2(2 * cxy, cxx - cyy)) % 180)


def angle_gap(a: float, b: float) -> float:
    d = abs(a - b) % 180
    return min(d, 180 - d)


def arc(bow: float, curvature: float) -> np.ndarray:
    return arc_alpha(size=SIZE, centre=CENTRE, bow_deg=np.array([bow]),
                     curvature=np.array([curvature]))[0]


def test_bars_have_the_requested_orientation():
    alpha = bar_alpha(size=SIZE, centre=np.array([[12.0, 12.0], [12.0, 12.0]]),
                      orientation_deg=np.array([0.0, 90.0]))
    assert alpha[0, 11:13, 5:19].min() == 1.0 and alpha[0, 5, 12] == 0.0   # horizontal
    assert alpha[1, 5:19, 11:13].min() == 1.0 and alpha[1, 12, 5] == 0.0   # vertical
    for degrees in (15.0, 60.0, 135.0):
        one = bar_alpha(size=SIZE, centre=CENTRE, orientation_deg=np.array([degrees]))[0]
        assert angle_gap(principal_axis_deg(one), degrees) < 2.0


@pytest.mark.parametrize("bow", BOWS.tolist())
def test_vanishing_curvature_converges_to_the_straight_level(bow):
    straight = arc(bow, 0.0)
    # The straight level is the bar along the arcs' chord, perpendicular to the bow direction.
    chord = bar_alpha(size=SIZE, centre=CENTRE, orientation_deg=np.array([bow + 90.0]))[0]
    assert np.array_equal(straight, chord)
    # An arc of curvature k sags by about k L^2 / 8 px off its chord and the anti-aliasing is
    # 1-Lipschitz in the distance to the centre line, so the pixel-wise gap shrinks with k (the
    # ends' hard cut is radial on the arc, square on the bar: a pixel near an end may flip late).
    gaps = [np.abs(arc(bow, k) - straight).sum() for k in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6)]
    assert all(a > b for a, b in zip(gaps[:-1], gaps[1:], strict=True)), gaps
    assert np.abs(arc(bow, 1e-6) - straight).max() < 1e-3, gaps
    assert straight.sum() > 20  # a 14 x 2 px stroke, not an empty image


@pytest.mark.parametrize("bow", BOWS.tolist())
def test_arcs_bow_towards_their_direction_with_the_chord_across_it(bow):
    direction = np.array([np.cos(np.deg2rad(bow)), np.sin(np.deg2rad(bow))])
    yy, xx = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5, indexing="ij")
    for k in CURVATURES[1:]:
        alpha = arc(bow, float(k))
        # Long axis along the chord, i.e. perpendicular to the bow direction ...
        assert angle_gap(principal_axis_deg(alpha), bow + 90.0) < 3.0
        # ... and the ends curl back, so the ink's centroid lies behind the middle (`CENTRE`).
        centroid = np.array([(alpha * xx).sum(), (alpha * yy).sum()]) / alpha.sum()
        assert (centroid - CENTRE[0]) @ direction < -0.3


def test_curve_family_straight_level_runs_along_the_chord():
    fams = probe_families(DIGITS_DATA, repeats=4, seed=3)
    curve = fams["curve"]
    for b, bow in enumerate(BOWS):
        pick = ((curve.levels == 0) & (curve.second == b)).nonzero()[:, 0]
        for i in pick.tolist():
            img = curve.images[i]
            # Ink weight: distance to the background colour (the corner pixel is background).
            weight = (img - img[:, :1, :1]).abs().sum(0).numpy()
            assert angle_gap(principal_axis_deg(weight), bow + 90.0) < 3.0, (bow, i)
    assert torch.equal(torch.unique(curve.levels), torch.arange(len(CURVATURES)))
