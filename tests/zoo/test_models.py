import json

import pytest
import torch
from sae_lens import SAE

import rrm_plugin
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.io import CorruptFileError
from rrm_plugin.zoo.models import MODELS, load_model_from_directory, save_model
from tests.conftest import tiny_vit_config


def test_save_load_round_trip_is_exact(tmp_path, tiny_images):
    model = build_hooked_vit(tiny_vit_config(), seed=3).eval()
    save_model(model, tmp_path / "m")
    loaded = load_model_from_directory(tmp_path / "m")
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded(tiny_images), model(tiny_images))


def test_corrupt_or_mismatched_model_files_are_reported(tmp_path):
    model = build_hooked_vit(tiny_vit_config(), seed=3)
    save_model(model, tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "d_model": 32, "d_head": 8}))
    shape_message = r"tensor .* has shape \[1, 1, 16\], expected \[1, 1, 32\]"
    with pytest.raises(CorruptFileError, match=shape_message):
        load_model_from_directory(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptFileError, match="not a readable safetensors file"):
        load_model_from_directory(tmp_path / "m")


def test_unknown_model_name_lists_available():
    with pytest.raises(KeyError, match=r"unknown model 'vit-huge'; available models: \['digits"):
        rrm_plugin.load_model("vit-huge")


def test_shipped_digits_vit_reaches_95_percent_held_out():
    model = rrm_plugin.load_model("digits-vit")
    test = rrm_plugin.load_test_set("digits-vit")
    with torch.no_grad():
        acc = (model(test.images).argmax(-1) == test.labels).float().mean().item()
    assert acc >= 0.95, acc
    assert model.cfg.n_layers >= 4 and (MODELS["digits-vit"].directory / "config.json").is_file()


def test_shipped_saes_load_by_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "rrm-digits-vit" in rrm_plugin.register_releases()
    sae = SAE.from_pretrained("rrm-digits-vit", "blocks.0.hook_resid_post")
    assert sae.cfg.architecture() == "topk" and sae.cfg.normalize_activations == "layer_norm"
    saes = rrm_plugin.load_saes("rrm-digits-vit")
    model = rrm_plugin.load_model("digits-vit")
    assert list(saes) == [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers - 1)]
    assert all(s.cfg.d_in == model.cfg.d_model for s in saes.values())
