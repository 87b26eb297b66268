import json

import pytest
import torch
from sae_lens import SAE

from rrm_plugin.io import CorruptFileError
from rrm_plugin.saes.pipeline import save_sae
from rrm_plugin.saes.registry import (
    LOCAL_LOADER_NAME,
    hook_sort_key,
    list_sae_ids,
    load_local_sae_components,
    load_saes,
    local_release_directory,
    read_local_sae_config,
    register_sae_release,
)
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


def test_hook_sort_key_orders_layers_numerically_and_numbers_before_names():
    hooks = ["blocks.10.hook_resid_post", "blocks.2.hook_resid_post", "blocks.2.hook_mlp_out",
             "blocks.ln", "blocks.9.hook_resid_post"]
    assert sorted(hooks, key=hook_sort_key) == [
        "blocks.2.hook_mlp_out", "blocks.2.hook_resid_post", "blocks.9.hook_resid_post",
        "blocks.10.hook_resid_post", "blocks.ln"]


def test_release_ids_are_in_layer_order_not_string_order(tmp_path):
    # String order would put blocks.10 before blocks.2.
    for layer in (10, 2):
        hook = f"blocks.{layer}.hook_resid_post"
        save_sae(new_topk_sae(d_in=4, d_sae=8, k=2, hook_name=hook, model_name="m"),
                 tmp_path / "rel" / hook)
    (tmp_path / "rel" / "notes").mkdir()  # a folder without cfg.json is not an SAE
    assert list_sae_ids(tmp_path / "rel") == ["blocks.2.hook_resid_post",
                                              "blocks.10.hook_resid_post"]


def test_empty_release_folder_is_named(tmp_path):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(FileNotFoundError,
                       match=rf"no SAEs \(sub-folders with cfg.json\) in {tmp_path}/empty$"):
        register_sae_release("x", tmp_path / "empty", model_name="m")


def test_registered_entry_is_a_complete_saelens_lookup(release_dir):
    from sae_lens.loading.pretrained_saes_directory import (
        PretrainedSAELookup,
        get_norm_scaling_factor,
        get_pretrained_saes_directory,
    )

    directory, _ = release_dir
    register_sae_release("test-entry", directory, model_name="the-model")
    assert get_pretrained_saes_directory()["test-entry"] == PretrainedSAELookup(
        release="test-entry", repo_id=str(directory.resolve()), model="the-model",
        conversion_func=LOCAL_LOADER_NAME, saes_map={h: h for h in HOOKS},
        expected_var_explained={}, expected_l0={}, neuronpedia_id={}, norm_scaling_factor={},
        config_overrides=None)
    assert get_norm_scaling_factor("test-entry", HOOKS[0]) is None  # SAELens reads the dicts
    assert local_release_directory("test-entry") == directory.resolve()
    assert local_release_directory("never-registered") is None


def test_local_config_getter_device_and_overrides(release_dir):
    directory, _ = release_dir
    saved = read_local_sae_config(str(directory), HOOKS[0])
    assert saved["device"] == "cpu" and saved["d_sae"] == 16 and saved["k"] == 3
    assert read_local_sae_config(str(directory), HOOKS[0], device="meta")["device"] == "meta"
    cfg = read_local_sae_config(str(directory), HOOKS[0], cfg_overrides={"k": 2})
    assert cfg["k"] == 2 and cfg["d_sae"] == 16


def test_local_loader_puts_weights_on_the_device_and_applies_overrides(release_dir):
    directory, saes = release_dir
    cfg, state, sparsity = load_local_sae_components(str(directory), HOOKS[1])
    assert sparsity is None and cfg["device"] == "cpu"
    for name, tensor in saes[HOOKS[1]].state_dict().items():
        assert torch.equal(state[name], tensor) and state[name].device.type == "cpu", name
    cfg, state, _ = load_local_sae_components(str(directory), HOOKS[1], device="meta",
                                              cfg_overrides={"k": 2})
    assert cfg["device"] == "meta" and cfg["k"] == 2
    assert all(t.is_meta for t in state.values())


@pytest.mark.parametrize("missing", ["architecture", "d_in", "d_sae"])
def test_config_without_a_required_key_is_named(release_dir, missing):
    directory, _ = release_dir
    path = directory / HOOKS[0] / "cfg.json"
    cfg = json.loads(path.read_text())
    del cfg[missing]
    path.write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match=rf"^{path} lacks '{missing}'$"):
        read_local_sae_config(str(directory), HOOKS[0])


def test_load_saes_keys_by_hook_name_and_returns_eval_saes(tmp_path):
    # Folder names other than the hook names: the dict is keyed by the SAEs' hook points.
    for layer in (0, 1):
        sae = new_topk_sae(d_in=4, d_sae=8, k=2, hook_name=f"blocks.{layer}.hook_resid_post",
                           model_name="m", seed=layer)
        save_sae(sae, tmp_path / "rel" / f"layer{layer}")
    register_sae_release("test-keys", tmp_path / "rel", model_name="m")
    saes = load_saes("test-keys")
    assert list(saes) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert all(isinstance(s, SAE) and not s.training for s in saes.values())
    meta = load_saes("test-keys", device="meta")
    assert all(s.W_enc.is_meta for s in meta.values())


def test_load_saes_checks_the_recorded_provenance(release_dir):
    from rrm_plugin.provenance import ProvenanceError, write_release_provenance

    directory, saes = release_dir
    trained_on, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        other.weight.add_(1.0)
    write_release_provenance(directory, model=trained_on, model_name="m", saes=saes)
    register_sae_release("test-prov", directory, model_name="m")
    assert list(load_saes("test-prov", model=trained_on)) == HOOKS
    assert list(load_saes("test-prov")) == HOOKS  # no model given: the SAEs are still checked
    with pytest.raises(ProvenanceError, match="SAE release 'test-prov' was trained on model 'm'"):
        load_saes("test-prov", model=other)
    changed = new_topk_sae(d_in=8, d_sae=16, k=3, hook_name=HOOKS[0], model_name="m", seed=99)
    save_sae(changed, directory / HOOKS[0])
    with pytest.raises(ProvenanceError, match=rf"SAE '{HOOKS[0]}' of release 'test-prov' does "
                                              "not match the weights its release recorded"):
        load_saes("test-prov")
