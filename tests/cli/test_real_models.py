"""End to end on a real-shaped model, offline: `rrm trace` and `rrm faithfulness` on photos.

A random full-size ViT-B/16 (timm's hub layout) and random SAEs of the paper's sizes (the RRM
authors' layout) sit in a temporary Hugging Face cache; the CLI runs as a user would run it, in a
fresh process with `HF_HUB_OFFLINE=1`.
"""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image
from sklearn.datasets import load_sample_images


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, array in zip(["china.jpg", "flower.jpg"], load_sample_images().images, strict=True):
        Image.fromarray(array).save(folder / name)
    return folder


def rrm(args: list[str], *, cache, scratch) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "TORCH_HOME": str(scratch / "torch"), "RRM_PLUGIN_CACHE": str(scratch / "rrm")}
    done = subprocess.run([sys.executable, "-m", "rrm_plugin.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_trace_and_faithfulness_on_photos_with_vit_b16(vit_b16_hub, photo_folder, tmp_path):
    cache, _, _ = vit_b16_hub
    model = ["--model", "vit-b16-imagenet", "--release", "rrm-vit-b16-imagenet"]
    out = tmp_path / "trace"
    # The viewer's readouts (84 circuits x 2 ViT-B forwards here) would double the CI time; the
    # viewer is run on the CLIP B/32 token graph below and on ViT-B size in bench_viewer.py.
    printed = rrm(["trace", str(photo_folder / "china.jpg"), *model, "--out", str(out),
                   "--no-viewer"], cache=cache, scratch=tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metadata"]["model"] == "vit-b16-imagenet"
    assert summary["metadata"]["file"].endswith("china.jpg")
    assert 0 <= summary["target_class"] < 1000 and summary["circuit_nodes"] > 0
    assert summary["graph_nodes"] > 1000  # 11 SAE layers over 197 tokens
    graph = json.loads((out / "graph.json").read_text())
    assert graph["nodes"] and graph["edges"] and graph["edges_total"] >= len(graph["edges"])
    assert (out / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    assert "circuit:" in printed

    out = tmp_path / "faith"
    printed = rrm(["faithfulness", *model, "--images", str(photo_folder), "--methods", "rrm",
                   "random", "--out", str(out)], cache=cache, scratch=tmp_path)
    data = json.loads((out / "faithfulness.json").read_text())
    assert data["n_images"] == 2 and set(data["auc"]["nodes"]) == {"rrm", "random"}
    assert sorted(os.path.basename(f) for f in data["metadata"]["files"]) == [
        "china.jpg", "flower.jpg"]
    assert "| rrm |" in printed and "median over the 2 input images" in printed


@pytest.mark.slow
def test_trace_with_vit_prismas_clip_b32_releases(datacomp_b32_hub, photo_folder, tmp_path):
    """LAION DataComp CLIP ViT-B/32 (open_clip layout) with ViT-Prisma's two SAE series."""
    photo = str(photo_folder / "flower.jpg")
    # Class-token TopK SAEs: a token graph whose features all sit on token 0. Dense ReLU SAEs on
    # all 50 tokens: a feature graph (their token graph would hold over 10^9 edges).
    # The viewer is exercised on the token graph; the 10^4-node feature graph skips it (CI time).
    for release, granularity, viewer in [("prisma-clip-b32-topk64-cls", "token", []),
                                         ("prisma-clip-b32-vanilla-x64", "feature",
                                          ["--no-viewer"])]:
        out = tmp_path / release
        rrm(["trace", photo, "--model", "clip-vit-b32-datacomp", "--release", release,
             "--granularity", granularity, "--out", str(out), *viewer], cache=datacomp_b32_hub,
            scratch=tmp_path)
        assert (out / "circuit.html").exists() == (not viewer)
        summary = json.loads((out / "summary.json").read_text())
        if not viewer:
            page = json.loads((out / "viewer.json").read_text())
            assert len(page["nodes"]["kind"]) == summary["graph_nodes"]  # latents, errors, logit
            # `--readouts curve` (default): the budget curve's circuits and the one shown first.
            measured = [i for i, step in enumerate(page["steps"]) if "runs" in step]
            assert {page["steps"][i]["mode"] for i in measured} == {"budget", "influence"}
            assert page["default_step"] in measured
            assert all(set(page["steps"][i]["runs"]) == {"insertion", "deletion"}
                       for i in measured)
        assert summary["metadata"]["model"] == "clip-vit-b32-datacomp"
        assert summary["circuit_nodes"] > 0
        graph = json.loads((out / "graph.json").read_text())
        assert {n["layer"] for n in graph["nodes"]} == set(range(12))
        if granularity == "token":
            assert {n["token"] for n in graph["nodes"]} == {0}
