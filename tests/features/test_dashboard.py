"""Dashboards: records and cards agree with the measurements; pictures show what fired."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from rrm_plugin.attribution.baselines import Baselines
from rrm_plugin.features.dashboard import build_dashboards, write_dashboards
from rrm_plugin.features.render import DIM, heat_map, highlight, patch_grid
from rrm_plugin.lens.features import feature_class_scores

CARD_KEYS = {"layer", "feature", "hook_name", "density_tokens", "density_images",
             "max_activation", "lens_top", "top_images", "type"}


def test_highlight_keeps_firing_patches_and_dims_the_rest():
    image = torch.full((1, 3, 4, 4), 0.8)
    grid = torch.tensor([[[0.0, 2.0], [0.0, 0.0]]])  # only the top-right 2x2 patch fires
    lit = highlight(image, grid, size=4)[0]
    torch.testing.assert_close(lit[2:, :], torch.full((2, 4, 3), 0.8 * DIM))
    torch.testing.assert_close(lit[:2, :2], torch.full((2, 2, 3), 0.8 * DIM))
    # At the maximum: half the pixel, half the tint (1, .25, .1).
    torch.testing.assert_close(lit[0, 3], torch.tensor([0.9, 0.525, 0.45]))
    heat = heat_map(grid, size=4)[0]
    torch.testing.assert_close(heat[0, 3], torch.tensor(colormaps["inferno"](1.0)[:3]).float())
    torch.testing.assert_close(heat[3, 0], torch.tensor(colormaps["inferno"](0.0)[:3]).float())


def test_patch_grid_drops_prefix_and_refuses_non_square():
    maps = torch.arange(5.0)[None]
    assert patch_grid(maps, n_prefix=1).tolist() == [[[1.0, 2.0], [3.0, 4.0]]]
    with pytest.raises(ValueError, match="do not form a square grid"):
        patch_grid(maps, n_prefix=0)


@pytest.fixture
def dash(tiny_vit, tiny_saes):
    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    baselines = Baselines.zeros(tiny_saes, n_tokens=5)
    return build_dashboards(tiny_vit, tiny_saes, images, model_name="tiny", release="tiny-rel",
                            class_names=list("abcde"), baselines=baselines, k=3, progress=False)


def _decode(uri):
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_written_records_and_cards(dash, tiny_vit, tiny_saes, tmp_path):
    written = write_dashboards(dash, tmp_path, progress=False)
    names = {p.name for p in written}
    for k in range(len(tiny_saes)):
        assert {f"contact_sheet_layer{k}.png", f"density_layer{k}.png",
                f"dashboard_layer{k}.html"} <= names
    records = json.loads((tmp_path / "features.json").read_text())
    cards = json.loads((tmp_path / "cards.json").read_text())
    assert cards["schema"] == "rrm-feature-cards/1"
    assert (cards["model"], cards["release"]) == ("tiny", "tiny-rel")
    assert len(cards["cards"]) == sum(s.cfg.d_sae for s in tiny_saes.values())
    # The circuit viewer reads the file with every card checked (it is untrusted input there).
    from rrm_plugin.viewer.cards import read_cards

    assert read_cards(tmp_path / "cards.json") == cards
    lens = feature_class_scores(tiny_vit, tiny_saes)
    for k, hook in enumerate(tiny_saes):
        t, rec = dash.top[hook], records["layers"][k]
        assert rec["hook_name"] == hook and rec["layer"] == k
        np.testing.assert_allclose(rec["density_tokens"], t.token_density, atol=1e-6)
        assert rec["top_images"] == t.indices.tolist()
        assert sum(rec["circuits"]["count"]) == int(dash.circuits.count[k].sum())
        for f in range(t.d_sae):
            card = cards["cards"][f"{k}:{f}"]
            assert set(card) == CARD_KEYS and card["type"] is None
            assert (card["layer"], card["feature"], card["hook_name"]) == (k, f, hook)
            assert card["max_activation"] == pytest.approx(float(t.max_activation[f]))
            best = lens[hook][f].argmax().item()
            assert card["lens_top"][0]["class"] == "abcde"[best]
            assert [x["score"] for x in card["lens_top"]] == sorted(
                (x["score"] for x in card["lens_top"]), reverse=True)
            acts = [x["activation"] for x in card["top_images"]]
            assert acts == [float(v) for v in t.values[f] if v > 0]
            for image in card["top_images"]:
                assert _decode(image["png"]).shape == (72, 72, 3)
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet_layer0.png"))
    assert sheet.ndim == 3 and sheet.shape[2] == 3
    page = (tmp_path / "dashboard_layer1.html").read_text()
    assert page.count('class="card') == tiny_saes["blocks.1.hook_resid_post"].cfg.d_sae


def test_card_png_shows_the_activating_patch(dash):
    """The brightest tinted pixel of a card lies in the patch where the feature peaks."""
    from rrm_plugin.features.dashboard import _tiles

    hook = next(iter(dash.top))
    t = dash.top[hook]
    f = int(t.max_activation.argmax())
    lit, _ = _tiles(dash, hook, size=8, count=1)
    grid = patch_grid(t.maps[f, 0], n_prefix=1)
    row, col = divmod(int(grid.flatten().argmax()), grid.shape[1])
    redness = lit[f, 0, ..., 0] - lit[f, 0, ..., 2]
    peak = divmod(int(redness.flatten().argmax()), 8)
    assert (peak[0] // 4, peak[1] // 4) == (row, col)


def test_bad_input(tiny_vit, tiny_saes):
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="got 2 class names for a model with 5 classes"):
        build_dashboards(tiny_vit, tiny_saes, images, model_name="m", release="r",
                         class_names=["a", "b"], progress=False)
    with pytest.raises(ValueError, match="n_circuit_images must be in"):
        build_dashboards(tiny_vit, tiny_saes, images, model_name="m", release="r",
                         baselines=Baselines.zeros(tiny_saes, n_tokens=5), n_circuit_images=3,
                         progress=False)


def test_top_slots_without_firing_are_blank(dash):
    from rrm_plugin.features.dashboard import _tiles

    hook = list(dash.top)[1]
    t = dash.top[hook]
    lit, heat = _tiles(dash, hook, size=8, count=3)
    silent = t.values[:, :3] == 0
    assert silent.any() and (~silent).any()
    assert (lit[silent] == 1).all() and (heat[silent] == 1).all()
    assert (lit[~silent] < 1).any(dim=(1, 2, 3)).all()
