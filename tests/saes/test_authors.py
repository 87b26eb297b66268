"""The RRM authors' TopK SAE checkpoints, loaded by release name from an offline hub cache.

The oracle below is written from the authors' forward (per-token standardisation with the
unbiased std, `b_dec` subtracted before the encoder, ReLU then TopK, `b_enc` unused) and shares
no code with the SAELens class the loader maps them to.
"""

import io
import logging

import pytest
import torch
from sae_lens import SAE

import rrm_plugin
from rrm_plugin.io import CorruptFileError
from rrm_plugin.saes.authors import (
    authors_folder,
    convert_authors_state,
    load_authors_sae,
    parse_authors_folder,
    read_authors_sae_config,
)
from rrm_plugin.saes.hub import CheckpointNotFoundError
from rrm_plugin.zoo.releases import AUTHORS_SIZES, HUB_SAE_RELEASES
from tests.hubcache import COMMIT, add_file, record_hub_snapshots, torch_bytes

REPO = "timespt/topksae-vit-base-patch16-224"
rrm_plugin.register_releases()  # SAE.from_pretrained below finds the releases by name


def authors_state(d_in: int, d_sae: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_enc": torch.randn(d_sae, generator=g),  # stored, never used by their forward
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }


def checkpoint_bytes(state: dict, epoch: int = 50) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "model_state_dict": state, "optimizer_state_dict": {}}, buffer)
    return buffer.getvalue()


def authors_forward(x, state, k):
    """Their SAE, from the paper's code: returns (latents, reconstruction)."""
    mu = x.mean(-1, keepdim=True)
    s = x.std(-1, keepdim=True)  # unbiased
    x_n = (x - mu) / (s + 1e-5)
    pre = torch.relu((x_n - state["b_dec"]) @ state["W_enc"])
    values, indices = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, indices, values)
    x_hat = (z @ state["W_dec"] + state["b_dec"]) * s + mu
    return z, x_hat


@pytest.mark.parametrize("layer", [0, 6])
def test_release_layer_reproduces_authors_forward(offline_hub, layer, caplog):
    k, r = AUTHORS_SIZES["vit"][layer]
    d_sae = int(768 * r)
    state = authors_state(768, d_sae, seed=layer)
    add_file(offline_hub, REPO, f"{authors_folder(k=k, expansion=r, layer=layer)}/epoch50.pth",
             checkpoint_bytes(state))
    with caplog.at_level(logging.WARNING):
        sae = SAE.from_pretrained("rrm-vit-b16-imagenet", f"blocks.{layer}.hook_resid_post")
    assert "b_enc is non-zero" in caplog.text
    assert sae.cfg.d_in == 768 and sae.cfg.d_sae == d_sae and sae.cfg.k == k
    assert sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
    assert sae.cfg.metadata.model_name == "vit-b16-imagenet"
    # Residual-stream-like inputs: large per-token offsets and scales.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 197, 768, generator=g) * 3 + torch.randn(5, 197, 1, generator=g) * 10
    z_ref, x_hat_ref = authors_forward(x, state, k)
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
        x_hat_fwd = sae(x)
    assert (z > 0).sum(-1).max() == k
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_hat, x_hat_ref, atol=1e-5 * x.abs().max().item(), rtol=1e-5)
    torch.testing.assert_close(x_hat_fwd, x_hat_ref, atol=1e-5 * x.abs().max().item(), rtol=1e-5)


def test_checkpoint_under_a_model_folder_and_epoch50_not_another(offline_hub):
    k, r = AUTHORS_SIZES["clip_vit"][2]
    folder = authors_folder(k=k, expansion=r, layer=2)
    old, new = authors_state(768, int(768 * r), 0), authors_state(768, int(768 * r), 1)
    repo = HUB_SAE_RELEASES["rrm-clip-vit-b16"].repo_id
    add_file(offline_hub, repo, f"clip_vit/{folder}/epoch9.pth", checkpoint_bytes(old, 9))
    add_file(offline_hub, repo, f"clip_vit/{folder}/epoch50.pth", checkpoint_bytes(new, 50))
    sae = SAE.from_pretrained("rrm-clip-vit-b16", "blocks.2.hook_resid_post")
    torch.testing.assert_close(sae.W_enc.detach(), new["W_enc"])
    assert sae.b_enc.abs().max() == 0


def test_missing_layer_names_repo_and_files(offline_hub):
    state = authors_state(768, 192, 0)
    add_file(offline_hub, REPO, "K4_R0.25/L0/epoch50.pth", checkpoint_bytes(state))
    with pytest.raises(CheckpointNotFoundError, match=r"topksae-vit-base-patch16-224.*K32_R0.5/L1"):
        SAE.from_pretrained("rrm-vit-b16-imagenet", "blocks.1.hook_resid_post")


def test_uncached_repo_offline_is_a_clear_error(offline_hub):
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE is set"):
        SAE.from_pretrained("rrm-dinov2-vitb14-reg", "blocks.0.hook_resid_post")


class Payload:  # stands in for any Python object a pickle could smuggle
    pass


def test_checkpoints_needing_unpickling_are_refused(offline_hub):
    buffer = io.BytesIO()
    torch.save({"model_state_dict": authors_state(768, 192, 0), "extra": Payload()}, buffer)
    add_file(offline_hub, REPO, "K4_R0.25/L0/epoch50.pth", buffer.getvalue())
    with pytest.raises(CorruptFileError, match="arbitrary unpickling"):
        SAE.from_pretrained("rrm-vit-b16-imagenet", "blocks.0.hook_resid_post")


CKPT = r"/K4_R0\.25/L0/epoch50\.pth: "  # errors name the checkpoint file


@pytest.mark.parametrize(("bad", "message"), [
    ({"W_enc": torch.zeros(768, 100)},
     CKPT + r"tensor 'W_enc' has shape \[768, 100\], expected \[768, 192\]"),
    ({"b_dec": torch.full((768,), float("nan"))}, CKPT + "tensor 'b_dec' contains NaN/inf"),
])
def test_wrong_shapes_and_nan_are_refused(offline_hub, bad, message):
    state = {**authors_state(768, 192, 0), **bad}
    add_file(offline_hub, REPO, "K4_R0.25/L0/epoch50.pth", checkpoint_bytes(state))
    with pytest.raises(CorruptFileError, match=message):
        SAE.from_pretrained("rrm-vit-b16-imagenet", "blocks.0.hook_resid_post")


def test_corrupt_file_is_refused(offline_hub):
    add_file(offline_hub, REPO, "K4_R0.25/L0/epoch50.pth", b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="not a readable torch checkpoint"):
        SAE.from_pretrained("rrm-vit-b16-imagenet", "blocks.0.hook_resid_post")


def test_folder_names_round_trip():
    assert authors_folder(k=4, expansion=0.25, layer=0) == "K4_R0.25/L0"
    assert authors_folder(k=96, expansion=2, layer=3) == "K96_R2.0/L3"
    for layer, (k, r) in enumerate(AUTHORS_SIZES["dinov2"]):
        assert parse_authors_folder(authors_folder(k=k, expansion=r, layer=layer)) == (k, r, layer)
    with pytest.raises(ValueError, match="not an RRM authors' SAE folder"):
        parse_authors_folder("L3")


def test_release_table_lists_every_release():
    rows = rrm_plugin.list_releases()
    by_name = {r["release"]: r for r in rows}
    assert {"rrm-digits-vit", *HUB_SAE_RELEASES} <= set(by_name)
    vit = by_name["rrm-vit-b16-imagenet"]
    assert vit["hooks"][0] == "blocks.0.hook_resid_post" and len(vit["hooks"]) == 11
    assert vit["d_sae"][:3] == [192, 384, 768] and vit["k"][:3] == [4, 32, 64]


def test_config_getter_needs_no_download(offline_hub):
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    cfg = load_sae_config_from_huggingface("rrm-vit-b16-imagenet", "blocks.3.hook_resid_post")
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"]) == (768, 1536, 96)
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["normalize_activations"] == "layer_norm" and cfg["apply_b_dec_to_input"]
    assert cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert cfg["metadata"]["model_name"] == "vit-b16-imagenet"


def test_config_from_the_folder_name_alone():
    cfg = read_authors_sae_config("org/some-repo", "K32_R0.5/L1")
    assert cfg == {"architecture": "topk", "d_in": 768, "d_sae": 384, "k": 32,
                   "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
                   "normalize_activations": "layer_norm", "rescale_acts_by_decoder_norm": False,
                   "reshape_activations": "none", "model_name": "org/some-repo",
                   "hook_name": "blocks.1.hook_resid_post", "hook_head_index": None}
    cfg = read_authors_sae_config("org/r", "K4_R2.0/L7", device="meta",
                                  cfg_overrides={"d_in": 16, "model_name": "m", "k": 3})
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["model_name"], cfg["device"]) == (
        16, 32, 3, "m", "meta")
    assert cfg["hook_name"] == "blocks.7.hook_resid_post"


def test_b_enc_warning_names_the_checkpoint(caplog):
    state = authors_state(4, 8, seed=0)
    with caplog.at_level(logging.WARNING, logger="rrm_plugin.saes.authors"):
        out = convert_authors_state({**state, "b_enc": torch.full((8,), -0.5)}, d_in=4, d_sae=8,
                                    where="ckpt.pth")
    assert caplog.messages == ["ckpt.pth: b_enc is non-zero but the authors' forward never uses "
                               "it; the converted SAE uses b_enc = 0 as they do"]
    assert torch.equal(out["b_enc"], torch.zeros(8))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rrm_plugin.saes.authors"):
        out = convert_authors_state({**state, "b_enc": torch.zeros(8)}, d_in=4, d_sae=8,
                                    where="ckpt.pth")
    assert caplog.messages == []
    torch.testing.assert_close(out["W_dec"], state["W_dec"], rtol=0, atol=0)
    with pytest.raises(CorruptFileError, match=r"^ckpt.pth: missing tensors \['W_dec'\]"):
        convert_authors_state({k: v for k, v in state.items() if k != "W_dec"}, d_in=4,
                              d_sae=8, where="ckpt.pth")


def test_bare_state_dict_checkpoint_and_device(offline_hub):
    # A checkpoint holding the state dict itself (no training wrapper) loads the same.
    state = authors_state(768, 192, 0)
    add_file(offline_hub, REPO, "K4_R0.25/L0/epoch50.pth", torch_bytes(state))
    cfg, weights, sparsity = load_authors_sae(REPO, "K4_R0.25/L0")
    assert sparsity is None and cfg["d_sae"] == 192
    torch.testing.assert_close(weights["W_enc"], state["W_enc"], rtol=0, atol=0)
    _, on_meta, _ = load_authors_sae(REPO, "K4_R0.25/L0", device="meta")
    assert all(t.is_meta for t in on_meta.values())


def test_wrapped_state_that_is_not_a_dict_is_named(offline_hub):
    add_file(offline_hub, REPO, "K4_R0.25/L0/epoch50.pth",
             torch_bytes({"epoch": 50, "model_state_dict": [torch.zeros(3)]}))
    with pytest.raises(CorruptFileError, match=CKPT + "'model_state_dict' is a list$"):
        load_authors_sae(REPO, "K4_R0.25/L0")


def add_epochs(cache, epochs, folder="K4_R0.25/L0") -> dict[int, dict]:
    states = {epoch: authors_state(768, 192, seed=epoch) for epoch in epochs}
    for epoch, state in states.items():
        add_file(cache, REPO, f"{folder}/epoch{epoch}.pth", checkpoint_bytes(state, epoch))
    return states


def test_epoch50_is_loaded_even_when_later_epochs_exist(offline_hub):
    # The authors' code loads epoch50.pth; a later (or earlier) checkpoint is never preferred.
    states = add_epochs(offline_hub, [9, 50, 60, 100])
    _, weights, _ = load_authors_sae(REPO, "K4_R0.25/L0")
    torch.testing.assert_close(weights["W_dec"], states[50]["W_dec"], rtol=0, atol=0)


@pytest.mark.parametrize("epoch", [9, 100])
def test_an_explicit_epoch_reads_that_file(offline_hub, epoch):
    states = add_epochs(offline_hub, [9, 50, 100])
    cfg, weights, _ = load_authors_sae(REPO, "K4_R0.25/L0", cfg_overrides={"epoch": epoch})
    torch.testing.assert_close(weights["W_dec"], states[epoch]["W_dec"], rtol=0, atol=0)
    assert "epoch" not in cfg  # chooses the file; not a SAELens config key
    assert "epoch" not in read_authors_sae_config(REPO, "K4_R0.25/L0", cfg_overrides={
        "epoch": epoch})


def test_load_saes_passes_the_epoch_to_the_loader(offline_hub):
    states = add_epochs(offline_hub, [9, 50])
    default = rrm_plugin.load_saes("rrm-vit-b16-imagenet", sae_ids=["blocks.0.hook_resid_post"])
    chosen = rrm_plugin.load_saes("rrm-vit-b16-imagenet", sae_ids=["blocks.0.hook_resid_post"],
                                  cfg_overrides={"epoch": 9})
    hook = "blocks.0.hook_resid_post"
    torch.testing.assert_close(default[hook].W_dec.detach(), states[50]["W_dec"], rtol=0, atol=0)
    torch.testing.assert_close(chosen[hook].W_dec.detach(), states[9]["W_dec"], rtol=0, atol=0)


def test_missing_epoch50_lists_the_epochs_found_and_how_to_pick_one(offline_hub):
    add_epochs(offline_hub, [8, 9, 10])
    add_file(offline_hub, REPO, "K4_R0.25/L1/epoch50.pth", b"another layer's")
    with pytest.raises(CheckpointNotFoundError) as err:
        load_authors_sae(REPO, "K4_R0.25/L0")
    message = str(err.value)
    assert "has no epoch50.pth for K4_R0.25/L0" in message
    assert "epochs found for K4_R0.25/L0: [8, 9, 10]" in message  # numeric order, this layer's
    assert "cfg_overrides={'epoch': n}" in message and "{'epoch': 10}" in message
    with pytest.raises(CheckpointNotFoundError, match=r"no epoch7\.pth .*\[8, 9, 10\]"):
        load_authors_sae(REPO, "K4_R0.25/L0", cfg_overrides={"epoch": 7})


def test_missing_layer_without_any_epoch_says_so(offline_hub):
    add_epochs(offline_hub, [50])
    with pytest.raises(CheckpointNotFoundError, match=r"no epoch\*\.pth at all for K4_R0.25/L1$"):
        load_authors_sae(REPO, "K4_R0.25/L1")


def test_epochs_are_listed_from_the_hub_when_online(offline_hub, monkeypatch):
    from huggingface_hub import constants

    from rrm_plugin.saes import authors

    add_epochs(offline_hub, [8])
    listed = ["K4_R0.25/L0/epoch20.pth", "vit/K4_R0.25/L0/epoch30.pth", "K4_R0.25/L0/notes.txt",
              "K4_R0.25/L10/epoch40.pth", "K4_R0.25/L0/epoch5.pth.bak"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.list_repo_files", lambda repo: listed)
    monkeypatch.setattr(authors, "hub_snapshot", lambda repo, patterns, force_download: (
        offline_hub / "models--timespt--topksae-vit-base-patch16-224" / "snapshots" / COMMIT))
    with pytest.raises(CheckpointNotFoundError, match=r"epochs found for K4_R0.25/L0: \[20, 30\]"):
        load_authors_sae(REPO, "K4_R0.25/L0")


@pytest.mark.parametrize("epoch", [-1, "50", 5.0, True])
def test_bad_epochs_are_refused_before_any_download(offline_hub, epoch):
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        load_authors_sae(REPO, "K4_R0.25/L0", cfg_overrides={"epoch": epoch})


def test_the_same_epoch_in_two_places_is_refused(offline_hub):
    add_epochs(offline_hub, [50])
    add_epochs(offline_hub, [50], folder="vit/K4_R0.25/L0")
    with pytest.raises(CheckpointNotFoundError, match=r"holds 2 checkpoints .*expected exactly"):
        load_authors_sae(REPO, "K4_R0.25/L0")


def test_loader_asks_the_hub_for_the_layers_checkpoints_only(offline_hub, monkeypatch):
    from rrm_plugin.saes import authors

    add_file(offline_hub, REPO, "K4_R0.25/L0/epoch50.pth", checkpoint_bytes(authors_state(
        768, 192, 0)))
    calls = record_hub_snapshots(monkeypatch, authors)
    patterns = ["K4_R0.25/L0/epoch50.pth", "*/K4_R0.25/L0/epoch50.pth"]
    cfg, _, _ = load_authors_sae(REPO, "K4_R0.25/L0")
    assert calls == [(REPO, patterns, False)] and cfg["model_name"] == REPO
    cfg, _, _ = load_authors_sae(REPO, "K4_R0.25/L0", device="meta", force_download=True)
    assert calls[1:] == [(REPO, patterns, True)] and cfg["device"] == "meta"
