"""`rrm_plugin.trace` / `TraceResult` and `resolve_baselines` on the tiny sharp ViT.

`trace` must give exactly what `trace_image` (the files `rrm trace` writes) gives; the baselines
order is checked step by step against baselines built here by hand.
"""

import html
import json

import pytest
import torch

import rrm_plugin
from rrm_plugin.attribution.baselines import Baselines, compute_baselines
from rrm_plugin.errors import OutputExistsError, RRMUserError
from rrm_plugin.viewer.check import check_payload
from rrm_plugin.workflows.baselines import resolve_baselines
from rrm_plugin.workflows.trace import TraceConfig, trace, trace_image
from rrm_plugin.zoo.releases import RELEASE_ATTR


def same_tensors(a: Baselines, b: Baselines) -> bool:
    return all(torch.equal(getattr(a, kind)[h], getattr(b, kind)[h])
               for kind in ("features", "errors", "resid") for h in b.features)


def test_trace_result_saves_what_trace_image_writes(vit, saes, images, baselines,
                                                    reference_images, tmp_path):
    image, refs = images[0], reference_images[:6]
    config = TraceConfig(target_class=3, node_threshold=0.6, edge_threshold=0.9)
    expected = trace_image(vit, saes, image, baselines=baselines, out_dir=tmp_path / "direct",
                           reference_images=refs, config=config,
                           metadata={"baselines": "given"})
    result = rrm_plugin.trace(vit, saes, image, baselines=baselines, reference_images=refs,
                              target_class=3, node_threshold=0.6, edge_threshold=0.9)
    assert result.config == config and result.baselines == "given"
    assert result.summary() == {k: v for k, v in expected.items() if k != "files"}
    out = result.save(tmp_path / "saved")
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([*expected["files"], "rrm-output.json"])
    for name in expected["files"]:
        assert (out / name).read_bytes() == (tmp_path / "direct" / name).read_bytes(), name
    assert json.loads((out / "rrm-output.json").read_text())["command"] == "trace"
    # The page, in memory and in the notebook's isolated frame, is the file's text.
    page = result.html()
    assert page == (out / "circuit.html").read_text(encoding="utf-8")
    frame = result._repr_html_()
    assert frame.startswith('<iframe srcdoc="') and "<script" not in frame
    assert html.unescape(frame.split('srcdoc="', 1)[1].split('" style=')[0]) == page
    assert type(result.figure()).__name__ == "Figure"
    assert result.readouts["insertion"] == expected["insertion"]
    assert result.circuit.node_count == expected["circuit_nodes"]
    assert "class 3" in repr(result)


def test_save_refuses_a_folder_that_is_not_a_trace_and_replaces_an_earlier_trace(
        vit, saes, images, baselines, reference_images, tmp_path):
    result = trace(vit, saes, images[1], baselines=baselines, reference_images=reference_images,
                   viewer=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"out_dir .* overwrite=True"):
        result.save(mine)
    assert (mine / "thesis.tex").read_text() == "keep me"
    result.save(tmp_path / "t")
    result.save(tmp_path / "t")  # an earlier trace output is replaced
    assert not (tmp_path / "t" / "circuit.html").exists()
    with pytest.raises(RRMUserError, match="viewer=False"):
        result.html()
    assert result._repr_html_() is None


def test_trace_checks_its_settings_and_image(vit, saes, images, baselines):
    with pytest.raises(TypeError, match="node_treshold"):
        trace(vit, saes, images[0], baselines=baselines, node_treshold=0.5)
    with pytest.raises(RRMUserError, match=r"one image \[channels, height, width\]"):
        trace(vit, saes, images[:1], baselines=baselines)


def test_unnamed_models_need_explicit_preprocessing(vit, tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    with pytest.raises(RRMUserError, match="preprocessing="):
        rrm_plugin.load_images([path], model=vit)
    exact = rrm_plugin.Preprocessing(size=(8, 8), crop=None, mean=(0.5,) * 3, std=(0.5,) * 3)
    loaded = rrm_plugin.load_images(path, model=vit, preprocessing=exact)
    assert loaded.labels is None and loaded.files == [str(path)]
    want = torch.zeros(1, 3, 8, 8)
    want[:, 0] = 1.0  # red: (1 - .5) / .5; green, blue: (0 - .5) / .5 = -1
    want[:, 1:] = -1.0
    torch.testing.assert_close(loaded.images, want)


def test_baselines_order(vit, saes, images, reference_images, tmp_path, monkeypatch):
    monkeypatch.setenv("RRM_PLUGIN_CACHE", str(tmp_path / "cache"))
    two = images[:2]
    # No release recorded: the median over two or more images, zero for one, else an error.
    got = resolve_baselines(vit, saes, images=two)
    assert got.description == "median over the 2 input images"
    assert same_tensors(got.baselines, compute_baselines(vit, saes, two, progress=False))
    # Stand-ins say so, naming the command (no release recorded: a placeholder for it).
    assert got.warning.startswith("baselines are median over the 2 input images, not the")
    assert "`rrm baselines --release RELEASE --images IMAGES...`" in got.warning
    got = resolve_baselines(vit, saes, images=two[:1])
    assert got.description == "zero (one input image)"
    assert got.warning.startswith("baselines are zero (one input image), not the paper's")
    assert all(float(t.abs().sum()) == 0 for t in got.baselines.features.values())
    with pytest.raises(RRMUserError, match="give baselines="):
        resolve_baselines(vit, saes)
    # A file given beats everything; a release's cached file beats the images.
    reference = compute_baselines(vit, saes, reference_images, progress=False)
    reference.save(tmp_path / "given.safetensors")
    got = resolve_baselines(vit, saes, images=two, path=tmp_path / "given.safetensors")
    assert got.description == f"file {tmp_path / 'given.safetensors'}"
    assert got.warning is None
    assert same_tensors(got.baselines, reference)
    for sae in saes.values():
        setattr(sae, RELEASE_ATTR, "my-release")
    cached = tmp_path / "cache" / "baselines" / "my-release.safetensors"
    compute_baselines(vit, saes, reference_images[:5], progress=False).save(cached)
    got = resolve_baselines(vit, saes, images=two)
    assert got.description == f"cached {cached}"
    assert got.warning is None
    assert same_tensors(got.baselines, Baselines.load(cached))
    assert not same_tensors(got.baselines, reference)
    got = resolve_baselines(vit, saes, path=tmp_path / "given.safetensors")
    assert got.description.startswith("file ") and same_tensors(got.baselines, reference)


def test_named_models_record_their_name_and_the_shipped_baselines(tmp_path, monkeypatch):
    from rrm_plugin.zoo.baselines import load_release_baselines

    monkeypatch.setenv("RRM_PLUGIN_CACHE", str(tmp_path / "cache"))
    model = rrm_plugin.load_model("digits-vit")
    saes = rrm_plugin.load_saes("rrm-digits-vit", model=model)
    got = rrm_plugin.resolve_baselines(model, saes, images=torch.zeros(1, 3, 24, 24))
    assert got.description == "shipped with rrm-digits-vit"
    assert got.warning is None
    assert same_tensors(got.baselines, load_release_baselines("rrm-digits-vit"))
    assert isinstance(got, rrm_plugin.ResolvedBaselines)
    wrong = rrm_plugin.load_model("digits-vit")
    wrong.cfg.d_model = 32  # the residual stream the SAEs (d_in 64) read is now narrower
    with pytest.raises(RRMUserError, match="does not fit model 'digits-vit'"):
        rrm_plugin.load_saes("rrm-digits-vit", model=wrong)


def test_trace_with_stand_in_baselines_carries_the_warning_everywhere(
        vit, saes, images, baselines, reference_images, tmp_path, monkeypatch):
    monkeypatch.setenv("RRM_PLUGIN_CACHE", str(tmp_path / "cache"))
    refs = reference_images[:4]
    # No release on these SAEs and one image: zero baselines, the warning in result, summary
    # and page; with `rrm baselines`' command naming the recorded release.
    for sae in saes.values():
        setattr(sae, RELEASE_ATTR, "my-release")
    result = trace(vit, saes, images[0], reference_images=refs)
    assert result.baselines == "zero (one input image)"
    assert result.warning.startswith("baselines are zero (one input image), not the paper's")
    assert "`rrm baselines --release my-release --images IMAGES...`" in result.warning
    assert result.summary()["warning"] == result.warning
    assert result.viewer["warning"] == result.warning
    check_payload(result.viewer, result.graph, where="payload")
    given = trace(vit, saes, images[0], baselines=baselines, reference_images=refs)
    assert given.warning is None and given.summary()["warning"] is None
    assert "warning" in given.viewer and given.viewer["warning"] is None
