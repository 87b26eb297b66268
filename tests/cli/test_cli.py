import json

import pytest
import torch
from sae_lens import SAE

from rrm_plugin.cli.main import main
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.io import write_tensors
from rrm_plugin.saes.registry import register_sae_release
from rrm_plugin.zoo.models import save_model
from tests.conftest import tiny_vit_config


def test_eval_saes_prints_and_writes_json(tmp_path, capsys):
    assert main(["eval-saes", "--out", str(tmp_path / "eval.json")]) == 0
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["model"] == "digits-vit" and written["release"] == "rrm-digits-vit"
    results = written["metrics"]
    assert {"clean", "all", "blocks.0.hook_resid_post"} <= set(results)
    assert "| all |" in capsys.readouterr().out
    assert 0 < results["all"]["top1_accuracy"] <= 1


def test_train_saes_for_own_model_then_load_by_name(tmp_path):
    model = build_hooked_vit(tiny_vit_config(), seed=0).eval()
    save_model(model, tmp_path / "model")
    write_tensors(tmp_path / "images.safetensors", {"images": torch.rand(32, 3, 8, 8)})
    argv = ["train-saes", "--model-dir", str(tmp_path / "model"), "--images",
            str(tmp_path / "images.safetensors"), "--out", str(tmp_path / "rel"),
            "--d-sae", "24", "--k", "3", "--steps", "20"]
    assert main(argv) == 0
    ids = register_sae_release("own-release", tmp_path / "rel", model_name="custom")
    assert ids == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    sae = SAE.from_pretrained("own-release", "blocks.1.hook_resid_post")
    assert sae.cfg.d_sae == 24 and sae.cfg.k == 3


def test_train_saes_rejects_images_of_wrong_size(tmp_path):
    save_model(build_hooked_vit(tiny_vit_config(), seed=0), tmp_path / "model")
    write_tensors(tmp_path / "images.safetensors", {"images": torch.rand(4, 3, 16, 16)})
    argv = ["train-saes", "--model-dir", str(tmp_path / "model"), "--images",
            str(tmp_path / "images.safetensors"), "--out", str(tmp_path / "rel"),
            "--d-sae", "24", "--k", "3"]
    with pytest.raises(ValueError, match="16x16 pixels, model expects 8x8"):
        main(argv)
