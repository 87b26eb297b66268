import pytest
import torch
from sae_lens import SAE

from rrm_plugin.io import CorruptFileError
from rrm_plugin.saes.pipeline import save_sae
from rrm_plugin.saes.registry import load_saes, register_sae_release
from rrm_plugin.saes.training import new_topk_sae

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.10.hook_resid_post"]


@pytest.fixture
def release_dir(tmp_path):
    saes = {}
    for i, hook in enumerate(HOOKS):
        sae = new_topk_sae(d_in=8, d_sae=16 + i, k=3, hook_name=hook, model_name="m", seed=i)
        with torch.no_grad():
            sae.b_dec.normal_()
        save_sae(sae, tmp_path / "rel" / hook)
        saes[hook] = sae
    return tmp_path / "rel", saes


def test_from_pretrained_round_trip_is_exact_and_offline(release_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory, saes = release_dir
    ids = register_sae_release("test-rel", directory, model_name="m")
    assert ids == HOOKS  # layer order, not string order
    for hook, original in saes.items():
        loaded = SAE.from_pretrained("test-rel", hook)
        assert loaded.cfg.k == 3 and loaded.cfg.normalize_activations == "layer_norm"
        assert loaded.cfg.metadata.hook_name == hook
        for name, tensor in original.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
    assert list(load_saes("test-rel")) == HOOKS


def test_unknown_names_list_what_is_available(release_dir):
    directory, _ = release_dir
    register_sae_release("test-rel2", directory, model_name="m")
    with pytest.raises(ValueError, match=r"ID blocks.5.hook_resid_post not found.*Valid IDs"):
        SAE.from_pretrained("test-rel2", "blocks.5.hook_resid_post")
    with pytest.raises(KeyError, match=r"unknown sae_id.*available: \['blocks.0"):
        load_saes("test-rel2", sae_ids=["nope"])
    with pytest.raises(KeyError, match=r"unknown SAE release 'nope'.*rrm-digits-vit|test-rel"):
        load_saes("nope")


def test_corrupt_weights_file_is_reported(release_dir):
    directory, _ = release_dir
    (directory / HOOKS[0] / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    register_sae_release("test-corrupt", directory, model_name="m")
    with pytest.raises(CorruptFileError, match="not a readable safetensors file"):
        SAE.from_pretrained("test-corrupt", HOOKS[0])


def test_weights_not_matching_config_are_reported(release_dir):
    directory, _ = release_dir
    other = new_topk_sae(d_in=8, d_sae=99, k=3, hook_name=HOOKS[0], model_name="m")
    (directory / HOOKS[0] / "sae_weights.safetensors").write_bytes(
        _saved_bytes(other, directory.parent / "other")
    )
    register_sae_release("test-shape", directory, model_name="m")
    with pytest.raises(CorruptFileError, match=r"'W_enc' has shape \[8, 99\], expected \[8, 16\]"):
        SAE.from_pretrained("test-shape", HOOKS[0])


def test_corrupt_config_is_reported(release_dir):
    directory, _ = release_dir
    (directory / HOOKS[1] / "cfg.json").write_text("{broken")
    register_sae_release("test-cfg", directory, model_name="m")
    with pytest.raises(CorruptFileError, match="cfg.json is not valid JSON"):
        SAE.from_pretrained("test-cfg", HOOKS[1])


def test_missing_release_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        register_sae_release("x", tmp_path / "absent", model_name="m")


def _saved_bytes(sae, folder):
    save_sae(sae, folder)
    return (folder / "sae_weights.safetensors").read_bytes()


def test_local_loader_reads_what_saelens_own_disk_loader_reads(release_dir, monkeypatch):
    # Our loader (kept for its file checks) against SAELens's `SAE.load_from_disk`.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory, saes = release_dir
    register_sae_release("test-rel-disk", directory, model_name="m")
    for hook in saes:
        ours = SAE.from_pretrained("test-rel-disk", hook)
        theirs = SAE.load_from_disk(directory / hook)
        assert type(ours) is type(theirs) and ours.cfg.to_dict() == theirs.cfg.to_dict()
        for name, tensor in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[name], tensor), name
