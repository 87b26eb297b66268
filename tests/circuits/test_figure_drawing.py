"""The circuit figure on a hand-built graph: which nodes and edges are drawn, where, how big, in
which colour and with which labels; thumbnails and the strip built from them."""

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer
from rrm_plugin.circuits.circuit import Circuit
from rrm_plugin.circuits.figure import PatchExample, _strip, patch_thumbnail, plot_circuit

H0, H1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


def _layer(k, hook, features, scores, error_score):
    n = len(features)
    return GraphLayer(hook, k, 8, torch.tensor(features), None, torch.ones(n), torch.ones(n),
                      torch.tensor(scores), error_score)


def hand_graph_and_circuit():
    layers = [_layer(0, H0, [1, 4, 6], [2.0, -1.0, 0.5], 0.25),
              _layer(1, H1, [0, 3], [-4.0, 1.0], -0.5)]
    graph = Graph(layers, [torch.zeros(4, 2)], target_class=2, metric="adjusted_logit",
                  value=3.0, logits=torch.tensor([0.0, 1.0, 3.0, -1.0, 2.0]))
    latents = [torch.zeros(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)]
    latents[0][[1, 4, 6]] = True
    latents[1][[0, 3]] = True
    edges = [("L0/F1", "L1/F0", 2.0), ("L0/F4", "L1/F3", -1.0), ("L0/error", "L1/F0", 0.5),
             ("L0/F6", "L1/F3", 8.0),  # F6 is not drawn (3rd of layer 0 by |score|)
             ("L1/F0", "logit", -4.0), ("L1/F3", "logit", 1.0)]
    return graph, Circuit([H0, H1], latents, torch.tensor([True, False]), edges)


@pytest.fixture
def drawn(kept_figures, tmp_path):
    """plot_circuit's figure (the one it returns, which is the one it saved) and its main axes."""

    def draw(**kwargs):
        graph, circuit = hand_graph_and_circuit()
        path = tmp_path / "sub" / "c.png"
        fig = plot_circuit(graph, circuit, kwargs.pop("image", torch.rand(3, 8, 8)),
                           path=path, max_nodes_per_layer=2, **kwargs)
        assert path.stat().st_size > 0 and kept_figures == [fig]
        kept_figures.clear()
        return fig, fig.axes[1]

    return draw


# Hand layout: layer 0 shows F1 (+2), F4 (-1) of its 3 latents, then its selected error node;
# layer 1 shows F3 (+1), F0 (-4), sorted by signed score; its error is not in the circuit.
NODES = {"L0/F1": (1 / 4, 0, 2.0), "L0/F4": (2 / 4, 0, -1.0), "L0/error": (3 / 4, 0, 0.25),
         "L1/F3": (1 / 3, 1, 1.0), "L1/F0": (2 / 3, 1, -4.0)}
S_MAX = 4.0
DRAWN_EDGES = [("L0/F1", "L1/F0", 2.0), ("L0/F4", "L1/F3", -1.0), ("L0/error", "L1/F0", 0.5),
               ("L1/F0", "logit", -4.0), ("L1/F3", "logit", 1.0)]
W_MAX = 4.0


def _xy(nid):
    return (0.5, 2.0) if nid == "logit" else NODES[nid][:2]


def test_nodes_are_placed_sized_and_coloured_by_score(drawn):
    _, ax = drawn()
    points = ax.collections
    assert len(points) == len(NODES) + 1
    by_xy = {tuple(np.round(c.get_offsets()[0], 6)): c for c in points}
    for nid, (x, y, score) in NODES.items():
        c = by_xy[(round(x, 6), round(y, 6))]
        assert c.get_sizes()[0] == pytest.approx(80 + 1400 * abs(score) / S_MAX)
        colour = "lightgrey" if nid.endswith("error") else "salmon" if score > 0 else "lightblue"
        assert tuple(c.get_facecolor()[0]) == pytest.approx(mcolors.to_rgba(colour))
        assert len(c.get_paths()[0].vertices) == (5 if nid.endswith("error") else 26)  # square
    logit = by_xy[(0.5, 2.0)]
    assert tuple(logit.get_facecolor()[0]) == pytest.approx(mcolors.to_rgba("gold"))


def test_only_edges_between_drawn_nodes_are_drawn(drawn):
    _, ax = drawn()
    assert len(ax.lines) == len(DRAWN_EDGES)
    for line, (s, t, w) in zip(ax.lines, DRAWN_EDGES, strict=True):
        (x0, y0), (x1, y1) = _xy(s), _xy(t)
        assert list(line.get_xdata()) == pytest.approx([x0, x1])
        assert list(line.get_ydata()) == pytest.approx([y0, y1])
        assert line.get_linewidth() == pytest.approx(0.5 + 4 * abs(w) / W_MAX)
        assert line.get_alpha() == pytest.approx(0.25 + 0.6 * abs(w) / W_MAX)
        expected = "tab:red" if w > 0 else "tab:blue"
        assert mcolors.to_rgba(line.get_color()) == mcolors.to_rgba(expected)


def test_labels_name_layers_nodes_logit_and_title(drawn):
    classes = {H0: torch.arange(7, -1, -1), H1: torch.arange(8)}
    fig, ax = drawn(feature_classes=classes)
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    assert texts[f"{H0}\n3 latents kept"] == pytest.approx((-0.01, 0))
    assert texts[f"{H1}\n2 latents kept"] == pytest.approx((-0.01, 1))
    assert texts["F1 -> 6\n+2.00"] == pytest.approx((0.25 + 0.04, 0))
    assert texts["F4 -> 3\n-1.00"] == pytest.approx((0.5 + 0.04, 0))
    assert texts["error\n+0.25"] == pytest.approx((0.75 + 0.04, 0))
    assert texts["F3 -> 3\n+1.00"] == pytest.approx((1 / 3 + 0.04, 1))
    assert texts["F0 -> 0\n-4.00"] == pytest.approx((2 / 3 + 0.04, 1))
    assert texts["class 2\nadjusted_logit 3.00"] == pytest.approx((0.5, 2.3))
    assert len(texts) == 8
    assert fig._suptitle.get_text() == "circuit for class 2 (6 nodes)"
    footnote = fig.texts[-1].get_text()
    assert footnote.endswith("\nF<i> -> c: the class feature i's decoder direction favours "
                             "(feature lens)")
    assert footnote.startswith("node area ~ |score| (red: raises the target, blue: lowers it; ")


def test_without_feature_classes_nodes_are_named_by_latent(drawn):
    fig, ax = drawn(title="my title")
    texts = {t.get_text() for t in ax.texts}
    assert {"F1\n+2.00", "F4\n-1.00", "F3\n+1.00", "F0\n-4.00", "error\n+0.25"} <= texts
    assert fig._suptitle.get_text() == "my title"
    assert "feature lens" not in fig.texts[-1].get_text()


def test_input_image_is_shown_clamped(drawn):
    image = torch.linspace(-1, 2, 3 * 8 * 8).reshape(3, 8, 8)
    fig, _ = drawn(image=image)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_array_equal(shown, image.permute(1, 2, 0).clamp(0, 1).numpy())
    assert fig.axes[0].get_title() == "input"


def test_thumbnails_of_drawn_latents_with_examples(drawn):
    refs = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    examples = {(H0, 1): [PatchExample(0, 1, 0.9), PatchExample(1, 4, 0.5)],
                (H0, 6): [PatchExample(1, 2, 0.3)],  # F6 is not drawn: no thumbnail
                (H1, 3): []}  # no example: no thumbnail
    _, ax = drawn(examples=examples, reference_images=refs, patch_size=4)
    assert len(ax.child_axes) == 1
    strip = np.asarray(ax.child_axes[0].images[0].get_array())
    first = patch_thumbnail(refs[0], 1, patch_size=4)
    second = patch_thumbnail(refs[1], 4, patch_size=4)
    assert strip.shape == (12, 25, 3)
    np.testing.assert_array_equal(strip[:, :12], first)
    np.testing.assert_array_equal(strip[:, 12], np.ones((12, 3)))
    np.testing.assert_array_equal(strip[:, 13:], second)
    x0, y0, w, h = ax.child_axes[0].get_position(original=True).bounds  # in figure coordinates
    (xa, ya), (xb, yb) = ax.transData.transform([(0.25 - 0.055, 0.16), (0.25 + 0.055, 0.58)])
    to_fig = ax.figure.transFigure.inverted()
    (fx0, fy0), (fx1, fy1) = to_fig.transform([(xa, ya), (xb, yb)])
    assert (x0, y0, x0 + w, y0 + h) == pytest.approx((fx0, fy0, fx1, fy1))
    _, ax = drawn(examples=examples)  # no reference images: no thumbnails
    assert not ax.child_axes


def test_patch_thumbnail_by_hand():
    image = torch.linspace(-0.5, 1.5, 3 * 8 * 8).reshape(3, 8, 8)
    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    padded = np.zeros((16, 16, 3), dtype=np.float32)  # 4 pixels (one patch) of zeros around
    padded[4:12, 4:12] = img
    for token, (row, col) in {1: (0, 0), 2: (0, 1), 3: (1, 0), 4: (1, 1)}.items():
        expected = padded[row * 4 : row * 4 + 12, col * 4 : col * 4 + 12].copy()
        expected[4, 4:8] = expected[7, 4:8] = expected[4:8, 4] = expected[4:8, 7] = 1.0
        np.testing.assert_array_equal(patch_thumbnail(image, token, patch_size=4), expected)
        np.testing.assert_array_equal(
            patch_thumbnail(image, token + 1, patch_size=4, n_prefix=2), expected)
    # No context: the patch itself with its border.
    expected = img[4:8, 0:4].copy()
    expected[0, :] = expected[3, :] = expected[:, 0] = expected[:, 3] = 1.0
    np.testing.assert_array_equal(patch_thumbnail(image, 3, patch_size=4, context=0), expected)


def test_strip_puts_one_white_column_between_thumbnails():
    a, b, c = (np.full((2, 3, 3), v, dtype=np.float32) for v in (0.25, 0.5, 0.75))
    strip = _strip([a, b, c])
    assert strip.shape == (2, 11, 3)
    assert strip[:, :, 0].tolist() == [[0.25] * 3 + [1.0] + [0.5] * 3 + [1.0] + [0.75] * 3] * 2
    assert strip.dtype == np.float32
    assert _strip([a]).shape == (2, 3, 3)

