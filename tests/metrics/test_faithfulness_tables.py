"""The faithfulness tables of docs/circuits.md: known answers on hand-built curves, the docs'
marker block, and the docs' tables equal to the tables recomputed from the shipped run."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rrm_plugin.errors import RRMUserError
from rrm_plugin.io import write_json
from rrm_plugin.metrics.faithfulness import METHODS, FaithfulnessConfig
from rrm_plugin.metrics.faithfulness_file import load_faithfulness
from rrm_plugin.metrics.faithfulness_result import FaithfulnessResult
from rrm_plugin.metrics.faithfulness_tables import (
    BEGIN,
    END,
    docs_tables,
    replace_tables,
    tables_in,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "docs" / "faithfulness" / "faithfulness.json.gz"
SCRIPT = ROOT / "scripts" / "faithfulness_tables.py"
# Per-image offsets: every AUC has mean a + 0.3 and standard error 0.3 / sqrt(3) = 0.173.
OFFSETS = np.array([0.0, 0.3, 0.6])
INSERTION = {"rrm": 7.0, "rrm_edge": 8.0, "non_linearised": 5.0, "random": 2.0,
             "random_authors": 0.2, "neuron": 6.0}
DELETION = {"rrm": -2.0, "rrm_edge": -1.0, "non_linearised": -0.5, "random": 2.0,
            "random_authors": 3.0, "neuron": 0.0}


def hand_result():
    """Curves flat along the sweep (every axis gives the same AUC), offset per image."""
    sweep = (0.0, 0.5, 1.0)
    totals = {m: 100 for m in METHODS}

    def curves(level, total):
        flat = (level + OFFSETS)[:, None] * np.ones(len(sweep))
        return {"logit": flat, "adjusted_logit": flat, "probability": (flat + 3) / 10,
                "accuracy": (flat + 3) / 10,
                "node_count": np.tile([0.0, total / 2, total], (len(OFFSETS), 1))}

    image_curves = {m: {"insertion": curves(INSERTION[m], totals[m]),
                        "deletion": curves(DELETION[m], totals[m])} for m in METHODS}
    return FaithfulnessResult(
        config=FaithfulnessConfig(sweep=sweep), image_indices=[4, 9, 11],
        image_curves=image_curves, node_totals=totals,
        influence_circuit={"nodes": 75.25, "circuit_tracer_replacement_score": 0.8765})


def test_known_answers_bold_best_signs_and_ratio_digits():
    tables = docs_tables(hand_result())
    lines = tables.splitlines()
    # Mean a + 0.3, s.e. 0.17; insertion best = highest, deletion best = lowest.
    assert ("| RRM (node rule) | 7.30 ± 0.17 | 7.30 ± 0.17 | 7.30 ± 0.17 | **-1.70 ± 0.17** | "
            "**-1.70 ± 0.17** | **-1.70 ± 0.17** |") in lines
    assert ("| RRM (edge rule) | **8.30 ± 0.17** | **8.30 ± 0.17** | **8.30 ± 0.17** | "
            "-0.70 ± 0.17 | -0.70 ± 0.17 | -0.70 ± 0.17 |") in lines
    # Probability = (adjusted logit + 3) / 10: rrm insertion 1.030, s.e. 0.017.
    assert ("| RRM (node rule) | 1.030 ± 0.017 | 1.030 ± 0.017 | **0.130 ± 0.017** | "
            "**0.130 ± 0.017** |") in lines
    # Paired differences are exact (same offsets); ratio 7.3 / 2.3 = 3.17, delta-method s.e.
    # |1 - R| * 0.173 / 2.3 = 0.164; deletion ratio of probabilities 0.13 / 0.53 = 0.245,
    # s.e. |1 - R| * 0.0173 / 0.53 = 0.025.
    assert "| random, RRM's counts | nodes | +5.00 ± 0.00 | 3.17 ± 0.16 | -4.00 ± 0.00 | " \
           "0.245 ± 0.025 |" in lines
    assert "| | p | +5.00 ± 0.00 | 3.17 ± 0.16 | -4.00 ± 0.00 | 0.245 ± 0.025 |" in lines
    # 7.3 / 0.5 = 14.6 with s.e. 13.6 * 0.173 / 0.5 = 4.7: at s.e. >= 0.5, one decimal.
    assert "| random, authors' rule | nodes | +6.80 ± 0.00 | 14.6 ± 4.7 | -5.00 ± 0.00 | " \
           "0.206 ± 0.022 |" in lines
    assert "| nodes | 2.30 ± 0.17 | 0.50 ± 0.17 | +1.80 ± 0.00 |" in lines
    assert "| circuit_tracer_replacement_score | 0.88 |" in lines and "| nodes | 75.2 |" in lines
    # Margin rows: five methods x three axes, in the docs' order.
    names = [line.split(" | ")[0] for line in lines if " | nodes | " in line and "±" in line]
    assert names == ["| random, RRM's counts", "| random, authors' rule", "| neurons",
                     "| without linearisation", "| RRM (edge rule)"]


def test_every_method_is_needed():
    result = hand_result()
    del result.image_curves["neuron"]
    with pytest.raises(RRMUserError, match=r"missing \['neuron'\]"):
        docs_tables(result)


def test_marker_block_round_trip():
    page = f"intro\n\n{BEGIN}\n\nold | table\n\n{END}\n\nafter\n"
    new = replace_tables(page, "| a |\n|---|")
    assert new == f"intro\n\n{BEGIN}\n\n| a |\n|---|\n\n{END}\n\nafter\n"
    assert tables_in(new) == "| a |\n|---|"
    for broken in ("no markers", f"{END} {BEGIN}", f"{BEGIN} {BEGIN} {END}"):
        with pytest.raises(RRMUserError, match="expected one"):
            replace_tables(broken, "x")


def test_script_rewrites_a_page_from_a_run(tmp_path):
    result = hand_result()
    run = write_json(tmp_path / "run.json", result.to_json_dict())
    page = tmp_path / "page.md"
    page.write_text(f"# page\n{BEGIN}\nstale\n{END}\n")
    out = subprocess.run([sys.executable, str(SCRIPT), "--json", str(run), "--update",
                          str(page)], capture_output=True, text=True, cwd=ROOT, check=True)
    want = docs_tables(load_faithfulness(run))
    assert out.stdout.strip() == want
    assert tables_in(page.read_text()) == want and page.read_text().startswith("# page\n")


@pytest.mark.skipif(not SHIPPED.exists(), reason="docs/faithfulness/faithfulness.json.gz not "
                    "shipped yet (docs/circuits.md, Status)")
def test_docs_tables_are_the_shipped_runs():
    """Every number of the faithfulness tables in docs/circuits.md, recomputed from the shipped
    per-image records (`python scripts/faithfulness_tables.py` prints them)."""
    result = load_faithfulness(SHIPPED)
    assert len(result.image_indices) == 353 and result.config.seed == 42
    page = (ROOT / "docs" / "circuits.md").read_text()
    assert tables_in(page) == docs_tables(result)
