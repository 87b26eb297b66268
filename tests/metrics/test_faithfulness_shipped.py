"""The shipped faithfulness run (docs/faithfulness/faithfulness.json.gz, behind the tables of
docs/circuits.md): a few of its images recomputed with the documented command and seed give its
per-image records bit for bit (random circuits are seeded per image)."""

import numpy as np
import pytest

from rrm_plugin.cli.main import main
from rrm_plugin.metrics.faithfulness_file import load_faithfulness
from rrm_plugin.metrics.faithfulness_result import MODES
from tests.metrics.test_faithfulness_tables import SHIPPED

pytestmark = pytest.mark.skipif(
    not SHIPPED.exists(), reason="docs/faithfulness/faithfulness.json.gz not shipped yet")


@pytest.mark.slow
def test_documented_command_recomputes_shipped_records(tmp_path):
    shipped = load_faithfulness(SHIPPED)
    # First, middle and last image: three different batches of the 64-image run.
    rows = [0, len(shipped.image_indices) // 2, len(shipped.image_indices) - 1]
    picked = [shipped.image_indices[r] for r in rows]
    # `rrm faithfulness --out DIR` (seed 42, every method) restricted to these images.
    argv = ["faithfulness", "--seed", "42", "--image-indices", *map(str, picked),
            "--out", str(tmp_path / "rerun")]
    assert main(argv) == 0
    rerun = load_faithfulness(tmp_path / "rerun" / "faithfulness.json")
    assert rerun.image_indices == picked and rerun.config.seed == shipped.config.seed
    assert rerun.methods == shipped.methods and rerun.config.sweep == shipped.config.sweep
    for m in shipped.methods:
        for mode in MODES:
            for q, want in shipped.image_curves[m][mode].items():
                assert np.array_equal(rerun.image_curves[m][mode][q], want[rows]), (m, mode, q)
