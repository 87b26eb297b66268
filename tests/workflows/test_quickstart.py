"""The README's two Python quick starts, run verbatim in a fresh process in an empty folder.

The lines are read from README.md (the python block under each quick-start heading); until the
README has those headings, the agreed lines below stand in. Each run must write the trace folder
`rrm trace --out` writes, and the embedded one the same graph and circuit as `rrm trace 0`.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

EMBEDDED_HEADING = "### Quick start: the embedded default"
REAL_VIT_HEADING = "### Quick start: a real ViT"

EMBEDDED_LINES = """\
import rrm_plugin
model = rrm_plugin.load_model("digits-vit")
saes = rrm_plugin.load_saes("rrm-digits-vit", model=model)
test = rrm_plugin.load_test_set("digits-vit")
result = rrm_plugin.trace(model, saes, test.images[0])
result.save("trace_digit")
"""

REAL_VIT_LINES = """\
import rrm_plugin
model = rrm_plugin.load_model("vit-b16-imagenet")
saes = rrm_plugin.load_saes("rrm-vit-b16-imagenet", model=model)
images = rrm_plugin.load_images(["photo.jpg"], model=model)
result = rrm_plugin.trace(model, saes, images.images[0])
result.save("trace_photo")
"""

TRACE_FILES = {"circuit.html", "circuit.json", "circuit.png", "graph.json", "graph.lossless.json",
               "graph.lossless.safetensors", "rrm-output.json", "summary.json", "viewer.json"}


def readme_block(heading: str) -> str | None:
    """The first ```python block after `heading` in README.md, or None without that heading."""
    text = README.read_text()
    if heading not in text:
        return None
    after = text.split(heading, 1)[1]
    found = re.search(r"```python[^\n]*\n(.*?)```", after, flags=re.S)
    assert found, f"README.md has {heading!r} but no python block after it"
    return found.group(1)


def quick_start(heading: str, fallback: str) -> str:
    code = readme_block(heading)
    return fallback if code is None else code


def test_quick_starts_are_short_and_use_only_exported_names():
    import rrm_plugin

    for heading, fallback in [(EMBEDDED_HEADING, EMBEDDED_LINES), (REAL_VIT_HEADING,
                                                                    REAL_VIT_LINES)]:
        lines = [line for line in quick_start(heading, fallback).splitlines() if line.strip()]
        assert len(lines) <= 6, lines
        assert lines[0] == "import rrm_plugin"
        used = set(re.findall(r"rrm_plugin\.(\w+)", "\n".join(lines[1:])))
        assert used and used <= set(rrm_plugin.__all__), used - set(rrm_plugin.__all__)


def run_python(code: str, cwd: Path, env: dict | None = None) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=1500, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]


def check_trace_folder(out: Path) -> dict:
    assert {p.name for p in out.iterdir()} == TRACE_FILES
    assert json.loads((out / "rrm-output.json").read_text())["command"] == "trace"
    assert (out / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "circuit.html").read_text().startswith("<!DOCTYPE html>")
    return json.loads((out / "summary.json").read_text())


def test_embedded_quick_start_traces_as_rrm_trace_does(tmp_path, monkeypatch):
    from rrm_plugin.cli.main import main

    monkeypatch.setenv("RRM_PLUGIN_CACHE", str(tmp_path / "cache"))  # no user baselines
    work = tmp_path / "work"
    work.mkdir()
    run_python(quick_start(EMBEDDED_HEADING, EMBEDDED_LINES), work)
    summary = check_trace_folder(work / "trace_digit")
    assert summary["metadata"] == {"model": "digits-vit", "release": "rrm-digits-vit",
                                   "baselines": "shipped with rrm-digits-vit"}
    # The same image through the CLI: the same graph (every tensor, bit for bit) and circuit.
    assert main(["trace", "0", "--out", str(tmp_path / "cli"), "--no-viewer"]) == 0
    for name in ("graph.lossless.safetensors", "circuit.json"):
        assert (work / "trace_digit" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "metadata"} == {
        k: v for k, v in cli.items() if k != "metadata"}


@pytest.mark.slow
def test_real_vit_quick_start_on_the_offline_hub_cache(vit_b16_hub, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    cache, _, _ = vit_b16_hub
    work = tmp_path / "work"
    work.mkdir()
    Image.fromarray(load_sample_images().images[0]).save(work / "photo.jpg", format="JPEG")
    run_python(quick_start(REAL_VIT_HEADING, REAL_VIT_LINES), work, env={
        "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TORCH_HOME": str(tmp_path / "torch"),
        "RRM_PLUGIN_CACHE": str(tmp_path / "rrm")})
    summary = check_trace_folder(work / "trace_photo")
    assert summary["metadata"] == {"model": "vit-b16-imagenet",
                                   "release": "rrm-vit-b16-imagenet",
                                   "baselines": "zero (one input image)"}
    assert 0 <= summary["target_class"] < 1000 and summary["circuit_nodes"] > 0
    assert summary["graph_nodes"] > 1000  # 11 SAE layers of the paper's sizes
