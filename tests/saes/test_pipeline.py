"""Training a release: one SAE per hook on that hook's tokens, written in SAELens's format."""

import json

import pytest
import torch
from sae_lens import SAE

from rrm_plugin.provenance import model_fingerprint, read_release_provenance
from rrm_plugin.saes.pipeline import (
    collect_activations,
    default_sae_hooks,
    save_sae,
    train_sae_release,
)
from rrm_plugin.saes.training import TopKTrainingConfig, train_topk_sae

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_default_hooks_are_every_block_output_but_the_last(tiny_vit):
    assert tiny_vit.cfg.n_layers == 3
    assert default_sae_hooks(tiny_vit) == HOOKS


def test_collect_activations_flattens_every_token_of_every_image(tiny_vit, tiny_images):
    _, cache = tiny_vit.run_with_cache(tiny_images)
    for batch_size in (3, 256):  # 4 images: batches of 3 + 1, or one batch
        acts = collect_activations(tiny_vit, tiny_images, HOOKS, batch_size=batch_size,
                                   progress=False)
        assert list(acts) == HOOKS
        for hook in HOOKS:
            n, t, d = cache[hook].shape
            assert acts[hook].shape == (n * t, d)
            torch.testing.assert_close(acts[hook], cache[hook].reshape(n * t, d))


def test_release_is_each_hooks_own_sae_and_is_written_with_logs_and_provenance(
        tiny_vit, tiny_images, tmp_path):
    configs = {HOOKS[0]: TopKTrainingConfig(d_sae=12, k=2, n_steps=4, batch_size=10, seed=1),
               HOOKS[1]: TopKTrainingConfig(d_sae=8, k=3, n_steps=3, batch_size=7, seed=2)}
    saes = train_sae_release(tiny_vit, tiny_images, configs, model_name="tiny",
                             out=tmp_path / "rel", progress=False)
    assert list(saes) == HOOKS
    _, cache = tiny_vit.run_with_cache(tiny_images)
    logs = json.loads((tmp_path / "rel" / "training_log.json").read_text())
    assert list(logs) == HOOKS
    for hook, cfg in configs.items():
        acts = cache[hook].reshape(-1, cache[hook].shape[-1])
        alone, log = train_topk_sae(acts, cfg=cfg, hook_name=hook, model_name="tiny",
                                    progress=False)
        assert logs[hook] == {"final_mse": log.mse[-1],
                              "final_dead_fraction": log.dead_fraction[-1]}
        assert saes[hook].cfg.d_sae == cfg.d_sae and saes[hook].cfg.k == cfg.k
        assert saes[hook].cfg.metadata.model_name == "tiny"
        assert saes[hook].cfg.metadata.hook_name == hook
        loaded = SAE.load_from_disk(tmp_path / "rel" / hook)
        for name, tensor in alone.state_dict().items():
            torch.testing.assert_close(saes[hook].state_dict()[name], tensor, rtol=0, atol=0)
            torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    provenance = read_release_provenance(tmp_path / "rel")
    assert provenance["model_name"] == "tiny"
    assert provenance["model_fingerprint"] == model_fingerprint(tiny_vit)
    assert set(provenance["sae_fingerprints"]) == set(HOOKS)


def test_release_without_out_writes_nothing(tiny_vit, tiny_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TopKTrainingConfig(d_sae=8, k=2, n_steps=2, batch_size=8)
    saes = train_sae_release(tiny_vit, tiny_images, {HOOKS[1]: cfg}, model_name="tiny",
                             progress=False)
    assert list(saes) == [HOOKS[1]] and list(tmp_path.iterdir()) == []


def test_unknown_hook_is_named(tiny_vit, tiny_images):
    cfg = TopKTrainingConfig(d_sae=8, k=2, n_steps=1)
    with pytest.raises(KeyError, match=r"model has no hook point\(s\) \['blocks.9.nope'\]"):
        train_sae_release(tiny_vit, tiny_images, {HOOKS[0]: cfg, "blocks.9.nope": cfg},
                          model_name="tiny", progress=False)


def test_progress_bars_follow_the_progress_flag(tiny_vit, tiny_images, capsys):
    cfg = TopKTrainingConfig(d_sae=8, k=2, n_steps=1, batch_size=8)
    train_sae_release(tiny_vit, tiny_images, {HOOKS[0]: cfg}, model_name="tiny")
    err = capsys.readouterr().err
    assert "collect activations" in err and "SAE blocks.0.hook_resid_post" in err
    assert err.endswith("\n") and "train SAEs: 100%" in err.split("\r")[-1]  # only it stays
    train_sae_release(tiny_vit, tiny_images, {HOOKS[0]: cfg}, model_name="tiny",
                      progress=False)
    assert capsys.readouterr().err == ""


def test_save_sae_replaces_the_folder(tmp_path, tiny_saes):
    first, second = tiny_saes.values()
    save_sae(first, tmp_path / "s")
    (tmp_path / "s" / "stale.txt").write_text("old")
    save_sae(second, tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "cfg.json", "sae_weights.safetensors"]
    assert torch.equal(SAE.load_from_disk(tmp_path / "s").W_dec, second.W_dec)
