"""Drawing every figure of the package leaves matplotlib's global state alone: the backend the
user chose stays, and pyplot gains no figure and loses none of the user's."""

import os
import subprocess
import sys

import pytest

import rrm_plugin
from rrm_plugin.plotting import new_figure, save_figure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rrm_plugin.__file__)))

# "svg" stands for a backend the user chose (a notebook's inline one): anything but Agg, which
# the package renders its PNGs with.
DRAW_EVERYTHING = """
import sys, tempfile
from pathlib import Path
from types import SimpleNamespace
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
import torch
users = plt.figure()

from rrm_plugin.circuits.figure import plot_circuit
from rrm_plugin.cli.demo import plot_predictions
from rrm_plugin.debias.plot import plot_debias
from rrm_plugin.debias.study import summarise_seeds
from rrm_plugin.features.dashboard import _density_figure
from rrm_plugin.features.types import feature_types
from rrm_plugin.features.types_report import write_types
from rrm_plugin.lens.report import LensConfig
from rrm_plugin.lens.report_output import write_lens_report
from rrm_plugin.metrics.faithfulness_plot import plot_faithfulness
from tests.circuits.test_figure_drawing import hand_graph_and_circuit
from tests.debias.test_study import seed_dict
from tests.features.test_types import planted_model_and_sae
from tests.lens.test_lens_plots import hand_summary
from tests.lens.test_lens_report_output import hand_results, images_and_labels
from tests.metrics.test_faithfulness_report import curves_result

out = Path(tempfile.mkdtemp())
summary = hand_summary()
images, labels = images_and_labels()
written = write_lens_report(hand_results(summary), out / "lens", images=images, labels=labels,
                            config=LensConfig(n_example_images=2))
plot_faithfulness(curves_result(), out / "faithfulness.png")
graph, circuit = hand_graph_and_circuit()
plot_circuit(graph, circuit, torch.rand(3, 8, 8), path=out / "circuit.png")
plot_predictions(torch.rand(12, 3, 8, 8), torch.arange(12), torch.arange(12), torch.arange(12),
                 out / "predictions.png")
plot_debias(summarise_seeds([seed_dict(0, (0.2, 0.5)), seed_dict(1, (0.3, 0.4))], config={},
                            metadata={}), out / "debias.png")
density = torch.tensor([0.0, 0.01, 0.2])
_density_figure(SimpleNamespace(top={"h": SimpleNamespace(token_density=density,
                                                          image_density=density)}),
                "h", out / "density.png")
model, saes = planted_model_and_sae()
written += write_types(feature_types(model, saes, n_permutations=5, n_random=8, repeats=2,
                                     progress=False), out / "types")
pngs = sorted(p.name for p in out.rglob("*.png"))
print("PNGS", len(pngs), all(p.read_bytes()[:4] == b"\\x89PNG" for p in out.rglob("*.png")))
print("BACKEND", matplotlib.get_backend(), "FIGURES", plt.get_fignums() == [users.number])
"""


def test_drawing_every_figure_leaves_the_backend_and_pyplot_alone():
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("MPLBACKEND", None)
    proc = subprocess.run([sys.executable, "-c", DRAW_EVERYTHING], env=env, text=True,
                          capture_output=True, timeout=900, cwd=ROOT)
    # 5 lens plots, faithfulness, circuit, predictions, debias, density, 3 types figures
    # (shares, tuning curves, threshold sensitivity).
    assert "PNGS 13 True" in proc.stdout, (proc.stdout, proc.stderr[-3000:])
    assert "BACKEND svg FIGURES True" in proc.stdout, (proc.stdout, proc.stderr[-3000:])


def test_save_figure_writes_only_with_a_path_and_returns_the_figure(tmp_path):
    fig = new_figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    assert save_figure(fig, None, dpi=50) is fig and list(tmp_path.iterdir()) == []
    path = tmp_path / "new" / "f.png"  # parents created
    assert save_figure(fig, path, dpi=50) is fig
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temporary file left
    from PIL import Image

    with Image.open(path) as png:
        assert png.size == (100, 50)


def test_save_figure_refuses_the_shipped_folder():
    from rrm_plugin.io import SHIPPED_DIR

    with pytest.raises(PermissionError, match="shipped"):
        save_figure(new_figure(figsize=(1, 1)), SHIPPED_DIR / "x.png", dpi=10)
