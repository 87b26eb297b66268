"""Threshold sensitivity of the type shares, on hand-built statistics with known answers."""

import pytest
import torch

from rrm_plugin.features.types import FeatureTypes, LayerTypes
from rrm_plugin.features.types_rule import GROUPS, TYPES
from rrm_plugin.features.types_sensitivity import (
    GRID,
    layer_sensitivity,
    sensitivity,
    sensitivity_table,
    write_sensitivity,
)

G = {g: i for i, g in enumerate(GROUPS)}


def feature(fire=0.5, **scores):
    row = torch.zeros(len(GROUPS))
    for name, value in scores.items():
        row[G[name.replace("digit", "digit/class")]] = value
    return row, fire


# Each feature sits away from every threshold it meets (see the comments), so no row is a tie.
FEATURES = [
    feature(colour=0.77),            # A: typed iff colour floor <= 0.77 (quantile 0.95 only)
    feature(colour=0.785),           # B: quantile <= 0.975
    feature(colour=0.794),           # C: quantile <= 0.99
    feature(colour=0.799),           # D: always
    feature(position=0.22),          # E: min excess 0.2 only
    feature(position=0.27),          # F: min excess <= 0.25
    feature(orientation=0.33),       # G: min excess <= 0.3
    feature(orientation=0.38),       # H: min excess <= 0.35
    feature(curve=0.45),             # I: always
    feature(digit=0.6, curve=0.42),  # J: ratio 1.43, margin 1.25 only
    feature(digit=0.6, position=0.35),     # K: ratio 1.71, margin <= 1.5
    feature(digit=0.6, orientation=0.31),  # L: ratio 1.94, margin <= 1.75
    feature(digit=0.6),              # M: always
    feature(fire=0.007, colour=0.9),  # N: dead unless dead fraction 0.005 (then colour)
    feature(fire=0.012, position=0.1),  # O: dead at dead fraction >= 0.015, else mixed
    feature(fire=0.018),             # P: dead at 0.02, else mixed
    feature(),                       # Q: mixed
]


def statistics():
    scores = torch.stack([s for s, _ in FEATURES])
    fire = torch.tensor([f for _, f in FEATURES])
    # 41 live random latents with colour scores 0, 0.02, ..., 0.8: linear quantiles 0.76 (q .95),
    # 0.78 (.975), 0.792 (.99), 0.796 (.995); the other groups' floors are 0. Ten dead random
    # latents with colour score 5 must not count: with them the floor would be 5.
    live = torch.zeros(41, len(GROUPS))
    live[:, G["colour"]] = 0.02 * torch.arange(41)
    dead = torch.zeros(10, len(GROUPS))
    dead[:, G["colour"]] = 5.0
    random_scores = torch.cat([live, dead])
    random_fire = torch.cat([torch.full((41,), 0.5), torch.zeros(10)])
    return scores, fire, random_scores, random_fire


def counts(**c):
    out = dict.fromkeys(TYPES, 0)
    out.update({k.replace("digit", "digit/class"): v for k, v in c.items()})
    assert sum(out.values()) == len(FEATURES)
    return {t: v / len(FEATURES) for t, v in out.items()}


BASE = {"colour": 2, "position": 0, "orientation": 2, "curve": 1, "digit": 3, "dead": 1,
        "mixed": 8}
EXPECTED = {
    ("min_excess", 0.2): {**BASE, "position": 2, "mixed": 6},
    ("min_excess", 0.25): {**BASE, "position": 1, "mixed": 7},
    ("min_excess", 0.3): BASE,
    ("min_excess", 0.35): {**BASE, "orientation": 1, "mixed": 9},
    ("min_excess", 0.4): {**BASE, "orientation": 0, "mixed": 10},
    ("margin", 1.25): {**BASE, "digit": 4, "mixed": 7},
    ("margin", 1.5): BASE,
    ("margin", 1.75): {**BASE, "digit": 2, "mixed": 9},
    ("margin", 2.0): {**BASE, "digit": 1, "mixed": 10},
    ("dead_fraction", 0.005): {**BASE, "colour": 3, "dead": 0},
    ("dead_fraction", 0.01): BASE,
    ("dead_fraction", 0.015): {**BASE, "dead": 2, "mixed": 7},
    ("dead_fraction", 0.02): {**BASE, "dead": 3, "mixed": 6},
    ("random_quantile", 0.95): {**BASE, "colour": 4, "mixed": 6},
    ("random_quantile", 0.975): {**BASE, "colour": 3, "mixed": 7},
    ("random_quantile", 0.99): BASE,
    ("random_quantile", 0.995): {**BASE, "colour": 1, "mixed": 9},
}


def test_shares_at_every_threshold_match_the_hand_count():
    rows = layer_sensitivity(*statistics())
    assert [(r["threshold"], r["value"]) for r in rows] == [
        (name, v) for name, values in GRID.items() for v in values]
    for row in rows:
        key = (row["threshold"], row["value"])
        assert row["shares"] == pytest.approx(counts(**EXPECTED[key])), key
        assert row["default"] == (EXPECTED[key] is BASE)
    # The random latents: at the default floor (colour 0.792) only the live one at 0.8 is typed.
    default = next(r for r in rows if r["default"])
    assert default["random_typed"] == pytest.approx(1 / 51)
    assert default["floor"][G["colour"]] == pytest.approx(0.792, abs=1e-6)


def test_unknown_threshold_is_refused():
    with pytest.raises(ValueError, match="unknown thresholds"):
        layer_sensitivity(*statistics(), grid={"max_p": (0.05,)})


def test_report_files(tmp_path):
    scores, fire, random_scores, random_fire = statistics()
    n, z = len(scores), torch.zeros(len(scores), 8)
    layer = LayerTypes("blocks.0.hook_resid_post", z, z, z, scores, fire, ["mixed"] * n,
                       torch.zeros(n, 12), torch.zeros(n, 5, 8), torch.zeros(len(GROUPS)),
                       ["mixed"] * len(random_scores), random_scores, random_fire)
    result = FeatureTypes(layers={layer.hook_name: layer}, level_values={})
    records = sensitivity(result)
    table = sensitivity_table(records)
    # The default row of the margin table, in %: 2, 0, 2, 1, 3 typed, 8 mixed, 1 dead of 17.
    assert "| **1.5** | 0 | 0.0 | 11.8 | 11.8 | 5.9 | 17.6 | 47.1 | 5.9 | 2.0 |" in table
    # Colour's range over all rows: 1 of 17 (quantile .995) to 4 of 17 (quantile .95).
    assert "| 0 | 0.0 (0.0-11.8) | 11.8 (5.9-23.5) |" in table
    written = write_sensitivity(result, tmp_path)
    assert sorted(p.name for p in written) == ["types_sensitivity.json", "types_sensitivity.md",
                                               "types_sensitivity.png"]
    assert (tmp_path / "types_sensitivity.png").read_bytes()[:4] == b"\x89PNG"
