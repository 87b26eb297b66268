"""Offline with an empty cache, every hub model is refused in one line that names the repo and
the cache folder looked in (exit status 2), before its upstream loader runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rrm_plugin
from rrm_plugin.zoo.hub_cache import HUB_REPOS
from rrm_plugin.zoo.hub_models import DINOV2_HEAD_URL, DINOV2_REPO, HUB_MODELS
from tests.cli.conftest import expect_user_error
from tests.hubcache import add_file

ROOT = Path(rrm_plugin.__file__).resolve().parent.parent


def offline_line(name: str, repo: str, cache: Path) -> str:
    return (f"rrm trace: error: model {name!r} needs Hugging Face repo {repo!r}, which is not in "
            f"the hub cache {cache} (HF_HUB_OFFLINE is set): download it once with `hf download "
            f"{repo}` on a machine with access, or point HF_HUB_CACHE at a cache that has it")


def trace_argv(tmp_path: Path, name: str) -> list[str]:
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")  # the model load fails first
    return ["trace", str(image), "--model", name, "--release", "none", "--out",
            str(tmp_path / "t")]


def test_every_hub_model_has_its_repos_listed():
    assert set(HUB_REPOS) == set(HUB_MODELS)
    for name, repos in HUB_REPOS.items():
        assert all(repo in HUB_MODELS[name].source for repo in repos), name


@pytest.mark.parametrize("name", sorted(HUB_MODELS))
def test_uncached_hub_model_offline_is_one_line(name, offline_hub, tmp_path, capsys,
                                               monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    (repo,) = HUB_REPOS[name]
    line = expect_user_error(capsys, trace_argv(tmp_path, name), "")
    assert line == offline_line(name, repo, offline_hub)
    assert not (tmp_path / "t").exists()


def test_dinov2_with_its_backbone_cached_names_the_missing_head(offline_hub, tmp_path, capsys):
    add_file(offline_hub, DINOV2_REPO, "config.json", b"{}")
    head = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    line = expect_user_error(capsys, trace_argv(tmp_path, "dinov2-vitb14-reg"), "")
    assert line == (f"rrm trace: error: model 'dinov2-vitb14-reg' needs DINOv2's linear head "
                    f"dinov2_vitb14_reg4_linear_head.pth, which is not in torch hub's cache "
                    f"{head} (HF_HUB_OFFLINE is set): download {DINOV2_HEAD_URL} there")


def test_offline_from_the_environment_in_a_fresh_process(tmp_path):
    """As a user sets it: HF_HUB_OFFLINE=1 and an empty HF_HOME (its hub/ is the cache)."""
    code = ("import json, sys\nfrom rrm_plugin.cli.main import main\n"
            "print(json.dumps([main(a) for a in json.loads(sys.argv[1])]))")
    names = sorted(HUB_MODELS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TORCH_HOME"))}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TORCH_HOME=str(tmp_path / "torch"))
    proc = subprocess.run([sys.executable, "-c", code,
                           json.dumps([trace_argv(tmp_path, n) for n in names])],
                          env=env, capture_output=True, text=True, timeout=600)
    assert json.loads(proc.stdout.splitlines()[-1]) == [2] * len(names), proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("rrm trace: error: ")]
    expected = [offline_line(n, HUB_REPOS[n][0], tmp_path / "hf" / "hub") for n in names]
    assert errors == expected, proc.stderr[-3000:]
