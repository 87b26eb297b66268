"""The faithfulness report on hand-built curves: the markdown table's exact text and the figure's
contents (panels, curves, bands, labels), checked against the test's own trapezoid and s.e."""

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from rrm_plugin.metrics.faithfulness import FaithfulnessConfig
from rrm_plugin.metrics.faithfulness_plot import plot_faithfulness
from rrm_plugin.metrics.faithfulness_result import FaithfulnessResult
from tests.metrics.oracles import trapezoid_auc

SWEEP = (0.0, 0.25, 0.5, 1.0)
QUANTITIES = ("logit", "adjusted_logit", "probability", "accuracy")
NODE_TOTAL = 8


def curves_result(methods=("rrm", "random", "neuron"), n_images=3, criterion="topn"):
    """Seeded curves that differ between every method, mode and quantity (so a swapped mode or
    quantity shows), node counts rising from 0 to the total."""
    rng = np.random.default_rng(0)
    config = FaithfulnessConfig(sweep=SWEEP, methods=methods, criterion=criterion)
    curves = {}
    for m in methods:
        curves[m] = {}
        for mode in ("insertion", "deletion"):
            qs = {q: rng.normal(size=(n_images, len(SWEEP))) + 2.0 for q in QUANTITIES}
            inner = rng.integers(1, NODE_TOTAL, size=(n_images, 2)).astype(float)
            qs["node_count"] = np.concatenate(
                [np.zeros((n_images, 1)), np.sort(inner, 1), np.full((n_images, 1), NODE_TOTAL)],
                axis=1)
            curves[m][mode] = qs
    return FaithfulnessResult(config=config, image_indices=list(range(n_images)),
                              image_curves=curves, node_totals={m: NODE_TOTAL for m in methods})


def x_of(res, method, mode, axis):
    if axis == "index":
        return np.linspace(0, 1, len(SWEEP))
    if axis == "p":
        return np.array(SWEEP)
    return res.image_curves[method][mode]["node_count"].mean(0) / NODE_TOTAL


def image_auc(res, method, mode, quantity, axis):
    return trapezoid_auc(res.image_curves[method][mode][quantity], x_of(res, method, mode, axis))


def cell(values, *, sign=False):
    v = np.asarray(values, dtype=float)
    se = v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():{'+' if sign else ''}.3f} +- {se:.3f}"


def ratio_cell(a, b):
    r = a.mean() / b.mean()
    lin = (a - r * b) / b.mean()  # delta method
    return f"{r:.3f} +- {lin.std(ddof=1) / np.sqrt(len(lin)):.3f}"


@pytest.mark.parametrize("quantity", ["adjusted_logit", "probability"])
def test_table_is_the_documented_markdown_with_every_cell(quantity):
    res = curves_result()
    name = quantity.replace("_", " ")
    modes, axes = ("insertion", "deletion"), ("index", "p", "nodes")
    head = "| method | " + " | ".join(f"{mode[:3]}. AUC {name} ({axis})" for mode in modes
                                    for axis in axes) + " |"
    want = [head, "|---|---|---|---|---|---|---|"]
    for m in ("rrm", "random", "neuron"):
        want.append(f"| {m} | " + " | ".join(cell(image_auc(res, m, mode, quantity, axis))
                                            for mode in modes for axis in axes) + " |")
    others = [q for q in ("logit", "adjusted_logit", "probability", "accuracy") if q != quantity]
    want += ["", "| method | " + " | ".join(f"{mode[:3]}. AUC {q.replace('_', ' ')} (nodes)"
                                            for mode in modes for q in others) + " |",
             "|---|---|---|---|---|---|---|"]
    for m in ("rrm", "random", "neuron"):
        want.append(f"| {m} | " + " | ".join(cell(image_auc(res, m, mode, q, "nodes"))
                                            for mode in modes for q in others) + " |")
    want += ["", f"Margins on the {name} AUC (mean +- s.e. over paired images; ratio s.e. by "
             "the delta method):", "",
             "| rrm vs | axis | ins. difference | ins. ratio | del. difference | del. ratio |",
             "|---|---|---|---|---|---|"]
    for other in ("random", "neuron"):
        for axis in axes:
            cells = []
            for mode in modes:
                a = image_auc(res, "rrm", mode, quantity, axis)
                b = image_auc(res, other, mode, quantity, axis)
                cells += [cell(a - b, sign=True), ratio_cell(a, b)]
            want.append(f"| {other} | {axis} | " + " | ".join(cells) + " |")
    assert res.table(quantity).splitlines() == want


def test_table_without_the_reference_method_has_no_margins():
    table = curves_result(methods=("random", "neuron")).table()
    assert "Margins" not in table and "rrm vs" not in table
    assert len(table.splitlines()) == 2 + 2 + 1 + 2 + 2  # two tables of two rows, one blank


def test_table_signs_negative_and_positive_differences():
    res = curves_result(methods=("rrm", "random"))
    res.image_curves["random"]["insertion"]["adjusted_logit"] += 10.0  # rrm far below random
    line = next(s for s in res.table().splitlines() if s.startswith("| random | index |"))
    ins_diff, _, del_diff, _ = line.strip("| ").split(" | ")[2:]
    assert ins_diff.startswith("-") and del_diff.startswith("+")


@pytest.fixture
def drawn(kept_figures, tmp_path):
    """plot_faithfulness's figure (the one it returns, which is the one it saved) and its PNG."""

    def draw(res):
        path = tmp_path / "sub" / "f.png"
        fig = plot_faithfulness(res, path)
        assert kept_figures == [fig] and path.read_bytes()[:4] == b"\x89PNG"
        kept_figures.clear()
        return fig, path

    return draw


@pytest.mark.parametrize("criterion,symbol", [("topn", "p"), ("threshold", "tau")])
def test_plot_draws_mean_curves_bands_and_aucs_of_every_panel(drawn, criterion, symbol):
    res = curves_result(criterion=criterion)
    fig, path = drawn(res)
    # 2 rows (insertion, deletion) x 4 quantities, 4.5 in wide each, 7.5 in high, at 100 dpi.
    with Image.open(path) as png:
        assert png.size == (1800, 750)
    assert np.allclose(fig.get_size_inches(), (18, 7.5))
    axes = np.array(fig.axes).reshape(2, 4)
    assert fig._suptitle.get_text() == ("faithfulness over 3 correctly classified images "
                                        "(mean +- s.e.)")
    x = np.arange(len(SWEEP))
    for row, mode in enumerate(("insertion", "deletion")):
        for col, q in enumerate(("logit", "adjusted_logit", "probability", "accuracy")):
            ax = axes[row, col]
            assert ax.get_title() == f"{mode}: {q.replace('_', ' ')}"
            assert ax.title.get_fontsize() == 10
            assert ax.get_xlabel() == f"sweep value {symbol} ({criterion}; evenly spaced)"
            assert ax.xaxis.label.get_fontsize() == 8
            assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.25", "0.5", "1"]
            assert all(t.get_rotation() == 60 and t.get_fontsize() == 7
                       for t in ax.get_xticklabels())
            np.testing.assert_array_equal(ax.get_xticks(), x)
            legend = ax.get_legend()
            assert legend.get_title().get_text() == "AUC index / p / nodes"
            assert legend.get_title().get_fontsize() == 6
            assert all(t.get_fontsize() == 6 for t in legend.get_texts())
            labels = [t.get_text() for t in legend.get_texts()]
            assert len(ax.lines) == 3 and len(ax.collections) == 3
            for i, m in enumerate(("rrm", "random", "neuron")):
                y = res.image_curves[m][mode][q]
                line, band = ax.lines[i], ax.collections[i]
                np.testing.assert_array_equal(line.get_xdata(), x)
                np.testing.assert_allclose(line.get_ydata(), y.mean(0))
                assert line.get_marker() == "o" and line.get_markersize() == 3
                aucs = " / ".join(f"{image_auc(res, m, mode, q, a).mean():.2f}"
                                  for a in ("index", "p", "nodes"))
                assert labels[i] == f"{m} ({aucs})"
                # The band: mean +- s.e. over images, in the line's colour, alpha 0.2.
                se = y.std(0, ddof=1) / np.sqrt(len(y))
                verts = band.get_paths()[0].vertices
                for k in range(len(SWEEP)):
                    at = verts[np.isclose(verts[:, 0], x[k])][:, 1]
                    assert np.isclose(at.min(), y.mean(0)[k] - se[k])
                    assert np.isclose(at.max(), y.mean(0)[k] + se[k])
                assert band.get_alpha() == 0.2
                assert np.allclose(band.get_facecolor()[0][:3], to_rgb(line.get_color()))


def test_plot_of_one_image_has_bands_of_zero_width(drawn):
    res = curves_result(methods=("rrm",), n_images=1)
    fig, _ = drawn(res)
    assert fig._suptitle.get_text().startswith("faithfulness over 1 correctly classified images")
    verts = fig.axes[0].collections[0].get_paths()[0].vertices
    mean = res.image_curves["rrm"]["insertion"]["logit"].mean(0)
    for k in range(len(SWEEP)):
        np.testing.assert_allclose(verts[np.isclose(verts[:, 0], k)][:, 1], mean[k])


def test_json_margins_of_every_mode_quantity_and_axis():
    res = curves_result()
    data = res.to_json_dict()
    assert list(data) == ["config", "n_images", "image_indices", "headline_axis", "node_totals",
                          "axes", "curves", "image_curves", "auc", "margins",
                          "influence_circuit"]
    assert data["image_indices"] == [0, 1, 2] and data["n_images"] == 3
    assert data["influence_circuit"] == {}
    margins = data["margins"]
    assert margins["reference"] == "rrm"
    assert margins["ratio_se"] == "delta method on the paired per-image AUCs"
    assert list(margins["vs"]) == ["random", "neuron"]
    for other in ("random", "neuron"):
        for axis in ("index", "p", "nodes"):
            for mode in ("insertion", "deletion"):
                for q in ("logit", "adjusted_logit", "probability", "accuracy"):
                    a, b = (image_auc(res, m, mode, q, axis) for m in ("rrm", other))
                    got = margins["vs"][other][axis][mode][q]
                    assert list(got) == ["difference", "ratio"]
                    assert got["difference"]["mean"] == pytest.approx((a - b).mean())
                    assert got["difference"]["se"] == pytest.approx(
                        (a - b).std(ddof=1) / np.sqrt(3))
                    assert got["ratio"]["mean"] == pytest.approx(a.mean() / b.mean())


def test_mean_se_of_one_two_and_more_values():
    from rrm_plugin.metrics.faithfulness_result import mean_se

    assert mean_se(np.array([3.0])) == (3.0, 0.0)  # one image: no spread to estimate
    assert mean_se(np.array([1.0, 3.0])) == pytest.approx((2.0, np.sqrt(2.0) / np.sqrt(2.0)))
    assert mean_se(np.array([1.0, 2.0, 6.0])) == pytest.approx((3.0, np.sqrt(7.0) / np.sqrt(3)))


def test_float32_inputs_are_summarised_in_float64():
    """Curves stored as float32 give the float64 numbers of their exact values."""
    from rrm_plugin.metrics.faithfulness_result import auc, axis_positions, mean_se, paired_margin

    rng = np.random.default_rng(1)
    a32, b32 = (rng.normal(size=1000).astype(np.float32) + 1.0 for _ in range(2))
    a, b = a32.astype(np.float64), b32.astype(np.float64)
    se = a.std(ddof=1) / np.sqrt(len(a))
    assert mean_se(a32) == (float(a.mean()), float(se))
    margin = paired_margin(a32, b32)
    assert margin.difference.mean == float((a - b).mean())
    assert margin.ratio.mean == float(a.mean() / b.mean())
    y32 = a32[:7]
    x = np.linspace(0, 1, 7)
    assert auc(y32) == float(trapezoid_auc(a[:7], x))
    counts32 = rng.uniform(0, 9, size=(500, 3)).astype(np.float32)
    nodes = axis_positions("nodes", sweep=(0.0, 0.5, 1.0), node_counts=counts32, node_total=9)
    assert nodes.dtype == np.float64
    np.testing.assert_array_equal(nodes, counts32.astype(np.float64).mean(0) / 9)


def test_plot_of_two_images_has_standard_error_bands_in_a_new_folder(kept_figures, tmp_path):
    res = curves_result(methods=("rrm",), n_images=2)
    path = tmp_path / "new" / "nested" / "f.png"  # parents created
    fig = plot_faithfulness(res, path)
    assert path.read_bytes()[:4] == b"\x89PNG" and kept_figures == [fig]
    verts = fig.axes[0].collections[0].get_paths()[0].vertices
    y = res.image_curves["rrm"]["insertion"]["logit"]
    se = np.abs(y[0] - y[1]) / 2  # s.d. (ddof 1) of two values / sqrt(2)
    for k in range(len(SWEEP)):
        at = verts[np.isclose(verts[:, 0], k)][:, 1]
        np.testing.assert_allclose([at.min(), at.max()], [y.mean(0)[k] - se[k],
                                                          y.mean(0)[k] + se[k]])
