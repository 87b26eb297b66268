import json

import pytest

from rrm_plugin.cli.main import main


@pytest.mark.slow
def test_demo_runs_the_whole_method_on_the_embedded_default(tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    sae_eval = json.loads((tmp_path / "sae_eval.json").read_text())
    # The pure replacement model keeps most of the clean accuracy (docs/models.md: 89.97% vs
    # 98.33%).
    assert sae_eval["clean"]["top1_accuracy"] >= 0.95
    assert 0.85 <= sae_eval["all"]["top1_accuracy"] < sae_eval["clean"]["top1_accuracy"]
    circuits = json.loads((tmp_path / "circuits" / "circuits.json").read_text())
    assert len(circuits["images"]) == 3
    for report in circuits["images"]:
        # A faithful circuit: keeping it beats deleting it by a wide margin.
        assert report["insertion"]["adjusted_logit"] > report["deletion"]["adjusted_logit"] + 3
    for figure in circuits["figures"]:
        assert figure.startswith("circuits/") and figure.endswith("circuit.png")
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page = figure.replace("circuit.png", "circuit.html")
        assert "rrm-circuit-viewer/1" in (tmp_path / page).read_text()
        rel = page.removeprefix("circuits/")
        # index.html links with a "./" prefix (a folder named like "javascript:" stays a path)
        assert f'href="./{rel}"' in (tmp_path / "circuits" / "index.html").read_text()
    lens = json.loads((tmp_path / "lens" / "lens.json").read_text())
    assert lens["n_images"] == 359
    rate = lens["identifiability"]["identifiability_rate"]
    # Class identity builds up with depth (docs/lens.md: 10.1, 15.4, 26.2, 61.5%).
    assert rate == sorted(rate) and rate[-1] > 50
    assert (tmp_path / "predictions.png").stat().st_size > 0
