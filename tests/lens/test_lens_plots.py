"""The lens PNGs drawn from a hand-written summary: which lines, with which data, styles, labels,
limits and ticks, and the saved file's pixel size (figsize x dpi)."""

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
from PIL import Image

from rrm_plugin.lens.plots import (
    plot_identifiability,
    plot_mechanisms,
    plot_perturbation,
    plot_probes,
    plot_token_maps,
)

BLOCKS = [1, 2, 3]


def hand_summary(n_prefix=1):
    """Three blocks, four classes; every series distinct so a swapped series shows."""
    return {
        "model": {"n_layers": 3, "n_prefix_tokens": n_prefix, "n_classes": 4},
        "identifiability": {
            "cls_score": [0.5, 0.7, 0.9], "image_score": [0.4, 0.6, 0.8],
            "identifiability_rate": [10.0, 20.0, 30.0],
            "images_with_identifiable_token": [40.0, 50.0, 60.0],
        },
        "change_rate": [5.0, 15.0, 25.0],
        "perturbation": {
            "fraction_removed": [0.0, 0.25, 0.5, 0.75],
            "curves": {"ours_negative": [1.0, 0.9, 0.8, 0.7],
                       "linear_probe_positive": [1.0, 0.5, 0.25, 0.0],
                       "random_shared": [1.0, 0.75, 0.5, 0.25]},
            "auc": {"ours_negative": 0.81234, "linear_probe_positive": None, "random_shared": 0.5},
        },
        "sublayer_change_rate": {"attn_cls": [None, None, None], "attn_image": [11.0, 12.0, 13.0],
                                 "mlp_image": [21.0, 22.0, 23.0]},
        "residual_composition": {"previous": [1.0, 2.0, 3.0], "attn": [4.0, 5.0, 6.0],
                                 "mlp": [7.0, 8.0, 9.0], "composition": [10.0, 11.0, 12.0]},
        "memories": {
            "attn": {"key_value_all": [31.0, 32.0, 33.0], "key_value_control": [1.0, 2.0, 3.0]},
            "mlp": {"key_value_all": [41.0, 42.0, 43.0], "key_value_control": [4.0, 5.0, 6.0],
                    "class_value_agreement": {"trained": [0.1, 0.2, 0.3],
                                              "control": [0.01, 0.02, 0.03]}},
        },
        "linear_probes": {
            "kinds": ["resid", "mlp"],
            "probe_accuracy_image_tokens": [[50.0, 60.0, 70.0], [55.0, 65.0, 75.0]],
            "projection_accuracy_image_tokens": [[20.0, 30.0, 40.0], [25.0, 35.0, 45.0]],
        },
    }


@pytest.fixture
def drawn(kept_figures, tmp_path):
    """Calls a plot function and returns the figure it returns, which must be the one it saved;
    checks that the PNG is figsize x 110 dpi pixels and that no path means no file."""
    from matplotlib.figure import Figure

    default_left = Figure().subplotpars.left

    def draw(plot, *args, size, **kwargs):
        path = tmp_path / "p.png"
        fig = plot(*args, path, **kwargs)
        assert isinstance(fig, Figure) and kept_figures == [fig]
        kept_figures.clear()
        with Image.open(path) as png:
            assert png.size == (round(size[0] * 110), round(size[1] * 110))
        assert tuple(fig.get_size_inches()) == pytest.approx(size)
        # tight_layout moved the axes off the default subplot margins.
        assert fig.axes[0].get_position().x0 != pytest.approx(default_left)
        path.unlink()
        unsaved = plot(*args, None, **kwargs)
        assert isinstance(unsaved, Figure) and not path.exists() and kept_figures == []
        return fig

    return draw


def assert_grid(axes):
    """`axes` [rows, columns] are laid out as such: left to right, then top to bottom."""
    for row, above in zip(axes[1:], axes, strict=False):
        assert row[0].get_position().y1 < above[0].get_position().y0
    for row in axes:
        for right, left in zip(row[1:], row, strict=False):
            assert left.get_position().x1 < right.get_position().x0
            assert left.get_position().y0 == pytest.approx(right.get_position().y0)


def assert_line(line, x, y, *, marker, style, label, colour=None, width=None):
    assert list(line.get_xdata()) == pytest.approx(x)
    assert list(line.get_ydata()) == pytest.approx(y)
    assert (line.get_marker(), line.get_linestyle(), line.get_label()) == (marker, style, label)
    if colour is not None:
        assert mcolors.to_rgba(line.get_color()) == mcolors.to_rgba(colour)
    if width is not None:
        assert line.get_linewidth() == width


def assert_lines(lines, expected):
    """`expected`: one (x, y, marker, linestyle, label) per line, in drawing order."""
    assert len(lines) == len(expected)
    for line, (x, y, marker, style, label) in zip(lines, expected, strict=True):
        assert_line(line, x, y, marker=marker, style=style, label=label)


def assert_axes(ax, *, title, xlabel, ylabel, ylim=None, xticks=BLOCKS):
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (title, xlabel, ylabel)
    if ylim is not None:
        assert ax.get_ylim() == pytest.approx(ylim)
    assert list(ax.get_xticks()) == xticks


def legend(ax, fontsize=None):
    texts = ax.get_legend().get_texts()
    if fontsize is not None:
        assert {t.get_fontsize() for t in texts} == {fontsize}
    return [t.get_text() for t in texts]


def test_identifiability_plot(drawn):
    summary = hand_summary()
    fig = drawn(plot_identifiability, summary, size=(10, 3.8))
    ax1, ax2 = fig.axes
    assert_grid([[ax1, ax2]])
    ident = summary["identifiability"]
    cls, image, chance = ax1.lines
    assert_line(cls, BLOCKS, ident["cls_score"], marker="o", style="-", label="[CLS]")
    assert_line(image, BLOCKS, ident["image_score"], marker="s", style="-", label="image tokens")
    # Chance: the mean score of a uniformly random rank, 1 - (4 - 1) / 2 / 4.
    assert list(chance.get_ydata()) == [0.625, 0.625]
    assert (chance.get_linestyle(), chance.get_linewidth()) == ("--", 1)
    assert mcolors.to_rgba(chance.get_color()) == mcolors.to_rgba("grey")
    assert_axes(ax1, title="mean class identifiability", xlabel="block",
                ylabel="identifiability score", ylim=(0, 1.02))
    assert legend(ax1) == ["[CLS]", "image tokens", "chance"]
    assert_lines(ax2.lines, [
        (BLOCKS, ident["identifiability_rate"], "o", "-", "% image tokens, true class top-1"),
        (BLOCKS, ident["images_with_identifiable_token"], "s", "-",
         "% images with >= 1 such token"),
        (BLOCKS, summary["change_rate"], "^", "-", "change rate (% tokens)"),
    ])
    assert_axes(ax2, title="rates", xlabel="block", ylabel="%", ylim=(0, 102))
    assert legend(ax2, fontsize=8) == [line.get_label() for line in ax2.lines]


def test_identifiability_plot_without_cls_has_no_cls_line(drawn):
    fig = drawn(plot_identifiability, hand_summary(n_prefix=0), size=(10, 3.8))
    assert [line.get_label() for line in fig.axes[0].lines] == ["image tokens", "chance"]


def test_perturbation_plot(drawn):
    summary = hand_summary()
    fig = drawn(plot_perturbation, summary, size=(6.4, 4.2))
    (ax,) = fig.axes
    curves = summary["perturbation"]["curves"]
    x = [0, 25, 50, 75]
    # The mode is the last "_" part of the name; a name without a mode gets a dotted line.
    assert_lines(ax.lines, [
        (x, curves["ours_negative"], "None", "-", "ours_negative (AUC 0.812)"),
        (x, curves["linear_probe_positive"], "None", "--",
         "linear_probe_positive (AUC undefined)"),
        (x, curves["random_shared"], "None", ":", "random_shared (AUC 0.500)"),
    ])
    assert_axes(ax, title="patch removal: negative (least important first) / positive\n"
                          "AUC with the authors' normalisation (unperturbed point left out)",
                xlabel="% of patches removed", ylabel="accuracy", ylim=(0, 1.02),
                xticks=list(ax.get_xticks()))
    assert legend(ax, fontsize=8) == [line.get_label() for line in ax.lines]


def test_mechanisms_plot(drawn):
    summary = hand_summary()
    fig = drawn(plot_mechanisms, summary, size=(17, 3.8))
    change, comp, cva, kv = fig.axes
    assert_grid([fig.axes])
    # attn_cls is all None (no CLS token): not drawn.
    attn, mlp, half = change.lines
    sub = summary["sublayer_change_rate"]
    assert_line(attn, BLOCKS, sub["attn_image"], marker="o", style="-", label="attn_image")
    assert_line(mlp, BLOCKS, sub["mlp_image"], marker="o", style="-", label="mlp_image")
    assert list(half.get_ydata()) == [50, 50]
    assert (half.get_linestyle(), half.get_linewidth()) == ("--", 1)
    assert mcolors.to_rgba(half.get_color()) == mcolors.to_rgba("grey")
    assert_axes(change, title="class-similarity change rate", xlabel="block", ylabel="% tokens",
                ylim=(0, 102))
    assert legend(change, fontsize=8) == ["attn_image", "mlp_image"]
    names = ["previous", "attn", "mlp", "composition"]
    assert len(comp.lines) == 4
    for line, name in zip(comp.lines, names, strict=True):
        assert_line(line, BLOCKS, summary["residual_composition"][name], marker="o", style="-",
                    label=name)
    assert_axes(comp, title="top-1 class after block matches", xlabel="block",
                ylabel="% tokens", ylim=(0, 102))
    assert legend(comp, fontsize=8) == names
    # Only mlp has a class-value agreement; both kinds have key-value agreement.
    mem = summary["memories"]
    trained, control = cva.lines
    assert_line(trained, BLOCKS, [0.1, 0.2, 0.3], marker="o", style="-", label="mlp")
    assert_line(control, BLOCKS, [0.01, 0.02, 0.03], marker="x", style=":",
                label="mlp random init")
    assert_axes(cva, title="class-value agreement", xlabel="block", ylabel="mean top-1 cosine")
    assert legend(cva, fontsize=8) == ["mlp", "mlp random init"]
    assert len(kv.lines) == 4
    for i, kind in enumerate(("attn", "mlp")):
        assert_line(kv.lines[2 * i], BLOCKS, mem[kind]["key_value_all"], marker="o", style="-",
                    label=kind)
        assert_line(kv.lines[2 * i + 1], BLOCKS, mem[kind]["key_value_control"], marker="x",
                    style=":", label=f"{kind} wrong class")
    assert_axes(kv, title="key-value agreement rate", xlabel="block", ylabel="% tokens",
                ylim=(0, 102))
    assert legend(kv, fontsize=8) == ["attn", "attn wrong class", "mlp", "mlp wrong class"]


def test_probes_plot_has_one_panel_per_kind(drawn):
    summary = hand_summary()
    probes = summary["linear_probes"]
    fig = drawn(plot_probes, summary, size=(8.4, 3.6))
    assert len(fig.axes) == 2
    assert_grid([fig.axes])
    for i, (ax, kind) in enumerate(zip(fig.axes, ("resid", "mlp"), strict=True)):
        probe, lens = ax.lines
        assert_line(probe, BLOCKS, probes["probe_accuracy_image_tokens"][i], marker="o",
                    style="-", label="ridge probe (trained)")
        assert_line(lens, BLOCKS, probes["projection_accuracy_image_tokens"][i], marker="s",
                    style="-", label="class projection (no training)")
        assert_axes(ax, title=f"{kind}: image-token top-1 accuracy", xlabel="block", ylabel="%",
                    ylim=(0, 102))
        assert legend(ax, fontsize=8) == ["ridge probe (trained)", "class projection (no training)"]


def test_probes_plot_with_one_kind(drawn):
    summary = hand_summary()
    probes = summary["linear_probes"]
    for key in probes:
        probes[key] = probes[key][:1]
    fig = drawn(plot_probes, summary, size=(4.2, 3.6))
    assert [ax.get_title() for ax in fig.axes] == ["resid: image-token top-1 accuracy"]


# Token maps: 2 images, 9 patches (3 x 3), 3 blocks of scores, blocks 0 and 2 shown.
SIDE = 3


def token_map_inputs():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 12, 12, generator=gen) * 1.5 - 0.25  # some outside [0, 1]
    scores = torch.rand(3, 2, SIDE * SIDE, generator=gen)
    return images, torch.tensor([7, 2]), scores


def test_token_maps_show_images_and_score_grids(drawn):
    images, labels, scores = token_map_inputs()
    fig = drawn(plot_token_maps, images, labels, scores, blocks=[0, 2], size=(1.9 * 3, 1.9 * 2))
    axes = np.array(fig.axes).reshape(2, 3)
    assert_grid(axes)
    for i in range(2):
        shown = axes[i, 0].images[0]
        np.testing.assert_array_equal(np.asarray(shown.get_array()),
                                      images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        assert shown.get_interpolation() == "nearest"
        assert axes[i, 0].get_title() == f"label {[7, 2][i]}"
        assert axes[i, 0].title.get_fontsize() == 8
        for j, b in ((1, 0), (2, 2)):
            grid = axes[i, j].images[0]
            np.testing.assert_array_equal(np.asarray(grid.get_array()),
                                          scores[b, i].reshape(SIDE, SIDE).numpy())
            assert grid.get_clim() == (0, 1)
            assert grid.get_cmap().name == "viridis"
            assert grid.get_interpolation() == "nearest"
            assert not axes[i, j].collections  # no mask, no outline
            # Block titles on the first row only, 1-based.
            assert axes[i, j].get_title() == (f"block {b + 1}" if i == 0 else "")
            if i == 0:
                assert axes[i, j].title.get_fontsize() == 8
    assert all(not ax.axison for ax in fig.axes)
    assert fig._suptitle.get_text() == ("identifiability score of each patch token "
                                        "(white: digit patches)")
    assert fig._suptitle.get_fontsize() == 9


def test_token_maps_outline_follows_patch_borders(drawn):
    images, labels, scores = token_map_inputs()
    mask = torch.zeros(2, SIDE * SIDE, dtype=torch.bool)
    mask[0, 0] = True  # image 0: top-left patch (row 0, column 0)
    mask[1, [5, 8]] = True  # image 1: rows 1-2 of the last column
    fig = drawn(plot_token_maps, images, labels, scores, blocks=[1], object_mask=mask,
                size=(1.9 * 2, 1.9 * 2))
    axes = np.array(fig.axes).reshape(2, 2)
    # The mask is upsampled 16x and stretched over the image extent, so the 0.5 level runs along
    # the patch borders (x.5) and the outermost vertices sit on the first and last upsampled
    # pixel centres, half a 1/16 patch inside the image. Data y is the patch row, as in imshow.
    edge = 0.5 / 16
    expected = [((-0.5 + edge, 0.5), (-0.5 + edge, 0.5)),
                ((1.5, SIDE - 0.5 - edge), (0.5, SIDE - 0.5 - edge))]
    for i, ((x0, x1), (y0, y1)) in enumerate(expected):
        (outline,) = axes[i, 1].collections
        assert list(outline.levels) == [0.5]
        assert mcolors.to_rgba(outline.get_edgecolor()[0]) == mcolors.to_rgba("white")
        assert list(outline.get_linewidths()) == [0.8]
        vertices = np.concatenate([p.vertices for p in outline.get_paths()])
        assert vertices[:, 0].min() == pytest.approx(x0)
        assert vertices[:, 0].max() == pytest.approx(x1)
        assert vertices[:, 1].min() == pytest.approx(y0)
        assert vertices[:, 1].max() == pytest.approx(y1)
        assert not axes[i, 0].collections  # no outline on the input image


def test_token_maps_of_one_image_and_one_block(drawn):
    images, labels, scores = token_map_inputs()
    fig = drawn(plot_token_maps, images[:1], labels[:1], scores[:, :1], blocks=[2],
                size=(1.9 * 2, 1.9))
    assert [ax.get_title() for ax in fig.axes] == ["label 7", "block 3"]
