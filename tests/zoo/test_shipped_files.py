"""No command writes the package's shipped files (issue 15 section 1). About a minute.

Every training / baseline command runs with its defaults (tiny step counts) against a copy of
the package, in one subprocess; afterwards every shipped file of the copy is byte-identical to
the original, and direct attempts to write into the copy's shipped folder are refused.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rrm_plugin

PACKAGE = Path(rrm_plugin.__file__).parent

SCRIPT = r"""
import json, sys
import rrm_plugin
from rrm_plugin.cli.main import main
print("PACKAGE " + rrm_plugin.__file__)
from rrm_plugin.io import SHIPPED_DIR
shipped = SHIPPED_DIR
codes = {
    "train-model": main(["train-model", "--steps", "2", "--out", "model"]),
    "train-saes": main(["train-saes", "--steps", "3", "--n-baseline-images", "8",
                        "--out", "release"]),
    "baselines": main(["baselines", "--n-images", "8"]),
    "train-model into shipped": main(["train-model", "--steps", "1", "--overwrite",
                                      "--out", str(shipped / "digits-vit")]),
    "train-saes into shipped": main(["train-saes", "--steps", "1", "--overwrite",
                                     "--out", str(shipped / "rrm-digits-vit")]),
    "baselines into shipped": main(["baselines", "--n-images", "4", "--out",
                                    str(shipped / "rrm-digits-vit" / "baselines.safetensors")]),
    "new model, shipped SAEs": main(["eval-saes", "--model", "model", "--out", "e.json"]),
    "shipped model, new SAEs": main(["eval-saes", "--model", "digits-vit", "--release",
                                     "release", "--out", "e2.json"]),
}
print("CODES " + json.dumps(codes))
"""


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow  # every command in a fresh process: a minute or more on 2 cores
def test_commands_never_write_shipped_files(tmp_path):
    copy = tmp_path / "site" / "rrm_plugin"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = _digests(copy / "zoo" / "weights")
    assert before == _digests(PACKAGE / "zoo" / "weights")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(copy.parent), "RRM_PLUGIN_CACHE": str(tmp_path / "c"),
           "HF_HUB_OFFLINE": "1"}
    env.pop(WRITE_ENV, None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"PACKAGE {copy / '__init__.py'}" in done.stdout  # the copy ran, not the original
    codes = json.loads(done.stdout.split("CODES ", 1)[1])
    assert codes["train-model"] == codes["train-saes"] == codes["baselines"] == 0, done.stderr
    for what in ("train-model into shipped", "train-saes into shipped", "baselines into shipped"):
        assert codes[what] == 2, (what, done.stderr)
    assert "inside rrm-plugin's shipped files" in done.stderr
    # Mismatched sets are refused with the provenance message; the matching set runs.
    assert codes["new model, shipped SAEs"] == 2
    assert codes["shipped model, new SAEs"] == 0, done.stderr[-3000:]
    assert "was trained on model 'digits-vit' with weights" in done.stderr
    assert _digests(copy / "zoo" / "weights") == before
    # The outputs went where they were asked to, with their provenance.
    assert (work / "model" / "model.safetensors").is_file()
    provenance = json.loads((work / "release" / "provenance.json").read_text())
    assert set(provenance["sae_fingerprints"]) == {f"blocks.{i}.hook_resid_post" for i in range(3)}
    assert (work / "release" / "baselines.safetensors").is_file()
    assert (tmp_path / "c" / "baselines" / "rrm-digits-vit.safetensors").is_file()


WRITE_ENV = "RRM_PLUGIN_WRITE_SHIPPED"
