"""ViT-Prisma's CLIP ViT-B/32 SAEs, loaded by release name from an offline hub cache.

The oracle is ViT-Prisma's forward written out from its formulas (optional per-token layer norm
with the unbiased std, `b_dec` subtracted before the encoder, ReLU or ReLU-after-TopK, decode,
de-normalise); it shares no code with the SAELens classes the loader maps the SAEs to.
"""

import json

import pytest
import torch
from sae_lens import SAE, StandardSAE, TopKSAE

import rrm_plugin
from rrm_plugin.io import CorruptFileError
from rrm_plugin.saes.hub import CheckpointNotFoundError
from rrm_plugin.saes.prisma import (
    load_prisma_sae,
    prisma_repo,
    prisma_seqpos_slice,
    read_prisma_sae_config,
    sae_lens_config_from_prisma,
)
from rrm_plugin.zoo.releases import (
    HUB_SAE_RELEASES,
    prisma_topk_cls_repo,
    prisma_vanilla_repo,
)
from tests.hubcache import (
    add_file,
    add_prisma_sae,
    prisma_sae_config,
    prisma_sae_state,
    record_hub_snapshots,
    torch_bytes,
)

VANILLA = "prisma-clip-b32-vanilla-x64"
TOPK_CLS = "prisma-clip-b32-topk64-cls"
rrm_plugin.register_releases()  # SAE.from_pretrained below finds the releases by name


def prisma_forward(x, state, *, k=None, layer_norm=False):
    """ViT-Prisma's SAE forward; returns (latents, reconstruction)."""
    if layer_norm:
        mu = x.mean(-1, keepdim=True)
        centred = x - mu
        std = centred.std(-1, keepdim=True)  # unbiased
        x = centred / (std + 1e-5)
    pre = (x - state["b_dec"]) @ state["W_enc"] + state["b_enc"]
    if k is None:
        z = torch.relu(pre)
    else:
        top = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    out = z @ state["W_dec"] + state["b_dec"]
    if layer_norm:
        out = out * std + mu
    return z, out


def stream(seed=1, tokens=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, tokens, 768, generator=g) * 2 + torch.randn(3, tokens, 1, generator=g) * 5


def test_release_specs_name_vit_prismas_repos():
    vanilla, topk = HUB_SAE_RELEASES[VANILLA], HUB_SAE_RELEASES[TOPK_CLS]
    assert [la.path for la in vanilla.layers][:3] == [
        "sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-0-hook_resid_post-l1-1e-05",
        "sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-1-hook_resid_post-l1-1e-05",
        "sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-2-hook_resid_post-l1-5e-05"]
    assert topk.layers[11].path == "sae-top_k-64-cls_only-layer_11-hook_resid_post"
    assert len(vanilla.layers) == len(topk.layers) == 12
    assert {la.d_sae for la in vanilla.layers} == {49152} and {la.k for la in topk.layers} == {64}
    assert vanilla.model_name == topk.model_name == "clip-vit-b32-datacomp"


@pytest.mark.parametrize("layer", [2, 11])
def test_vanilla_layer_reproduces_prisma_forward(offline_hub, layer):
    state = prisma_sae_state(768, 1536, seed=layer)
    add_prisma_sae(offline_hub, prisma_vanilla_repo(layer), prisma_sae_config(layer=layer), state)
    sae = SAE.from_pretrained(VANILLA, f"blocks.{layer}.hook_resid_post")
    assert isinstance(sae, StandardSAE) and sae.cfg.normalize_activations == "none"
    assert sae.cfg.d_sae == 1536 and sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
    assert sae.cfg.metadata.model_name == "clip-vit-b32-datacomp"
    assert sae.cfg.metadata.seqpos_slice == (None,)
    x = stream()
    z_ref, out_ref = prisma_forward(x, state)
    with torch.no_grad():
        z, out = sae.encode(x), sae(x)
    assert 0 < (z > 0).float().mean() < 1
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalisation", ["missing", None])
def test_topk_class_token_layer_reproduces_prisma_forward(offline_hub, normalisation):
    layer = 5
    extra = {} if normalisation == "missing" else {"normalize_activations": None}
    cfg = prisma_sae_config(layer=layer, topk=64, cls_only=True, **extra)
    state = prisma_sae_state(768, 1536, seed=7)
    add_prisma_sae(offline_hub, prisma_topk_cls_repo(layer), cfg, state)
    sae = SAE.from_pretrained(TOPK_CLS, f"blocks.{layer}.hook_resid_post")
    # A config without the key used ViT-Prisma's default, layer norm.
    layer_norm = normalisation == "missing"
    assert isinstance(sae, TopKSAE) and sae.cfg.k == 64
    assert sae.cfg.normalize_activations == ("layer_norm" if layer_norm else "none")
    assert sae.cfg.metadata.seqpos_slice == (0, 1)
    x = stream(tokens=1)  # trained on the class token
    z_ref, out_ref = prisma_forward(x, state, k=64, layer_norm=layer_norm)
    with torch.no_grad():
        z, out = sae.encode(x), sae(x)
    assert ((z > 0).sum(-1) <= 64).all() and (z > 0).sum() > 0
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, out_ref, atol=1e-5 * x.abs().max().item(), rtol=1e-5)


def test_legacy_state_dict_wrapper_loads(offline_hub):
    state = prisma_sae_state(768, 1536, seed=3)
    repo = f"Prisma-Multimodal/{prisma_vanilla_repo(0)}"
    add_file(offline_hub, repo, "config.json", json.dumps(prisma_sae_config(layer=0)).encode())
    add_file(offline_hub, repo, "weights.pt", torch_bytes({"cfg": {"d_in": 768},
                                                           "state_dict": state}))
    sae = SAE.from_pretrained(VANILLA, "blocks.0.hook_resid_post")
    torch.testing.assert_close(sae.W_dec.detach(), state["W_dec"])


class PickledConfig:  # stands in for ViT-Prisma's config object inside a training checkpoint
    def __init__(self):
        self.d_in = 768


def test_bad_checkpoints_are_refused_with_their_reason(offline_hub):
    hook = "blocks.0.hook_resid_post"
    repo = f"Prisma-Multimodal/{prisma_vanilla_repo(0)}"
    with pytest.raises(CheckpointNotFoundError, match=repo):
        SAE.from_pretrained(VANILLA, hook)
    add_file(offline_hub, repo, "config.json", json.dumps(prisma_sae_config(layer=0)).encode())
    with pytest.raises(CheckpointNotFoundError, match="weights.pt"):
        SAE.from_pretrained(VANILLA, hook)
    state = prisma_sae_state(768, 1536, seed=0)
    add_file(offline_hub, repo, "weights.pt", torch_bytes({"cfg": PickledConfig(),
                                                           "state_dict": state}))
    with pytest.raises(CorruptFileError, match="arbitrary unpickling"):
        SAE.from_pretrained(VANILLA, hook)
    add_file(offline_hub, repo, "weights.pt", torch_bytes({**state, "W_enc": state["W_dec"]}))
    with pytest.raises(CorruptFileError, match=r"/weights\.pt: tensor 'W_enc' has shape "
                                               r"\[1536, 768\], "
                                               r"expected \[768, 1536\]"):
        SAE.from_pretrained(VANILLA, hook)
    bad = {**state, "b_dec": torch.full((768,), float("nan"))}
    add_file(offline_hub, repo, "weights.pt", torch_bytes(bad))
    with pytest.raises(CorruptFileError, match="NaN"):
        SAE.from_pretrained(VANILLA, hook)


CFG = r"/config\.json: "  # every config error names the file it read
ABSENT = object()  # a key missing from the uploaded config


@pytest.mark.parametrize(("change", "message"), [
    ({"activation_fn_str": "jumprelu"},
     CFG + r"activation_fn_str='jumprelu' is not supported \(need 'relu' or 'topk'\)"),
    ({"architecture": "gated"},
     CFG + r"ViT-Prisma architecture 'gated' is not supported \(only 'standard' ReLU and TopK "
           r"SAEs\)"),
    ({"activation_fn_str": "topk", "activation_fn_kwargs": {}},
     CFG + r"TopK SAE needs activation_fn_kwargs.k in 1..1536, got None"),
    ({"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 0}},
     CFG + r"TopK SAE needs activation_fn_kwargs.k in 1..1536, got 0"),
    ({"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 1537}},
     CFG + r"TopK SAE needs activation_fn_kwargs.k in 1..1536, got 1537"),
    ({"d_in": 512, "d_sae": None},
     r"Prisma-Multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-0-\S+: config "
     r"d_in=512 does not match the release's model width"),
    ({"d_sae": 999}, CFG + r"d_sae=999 but d_in x expansion_factor = 768 x 2 = 1536"),
    ({"normalize_activations": "whiten"},
     CFG + r"normalize_activations='whiten' is not one of \('none', 'layer_norm', "
           r"'constant_norm_rescale'\)"),
    ({"cls_token_only": True, "use_patches_only": True},
     CFG + "both cls_token_only and use_patches_only are set"),
    ({"d_in": ABSENT}, CFG + "ViT-Prisma SAE config has no 'd_in'"),
    ({"expansion_factor": ABSENT}, CFG + "ViT-Prisma SAE config has no 'expansion_factor'"),
    ({"hook_point_layer": ABSENT}, CFG + "ViT-Prisma SAE config has no 'hook_point_layer'"),
])
def test_bad_configs_are_named(offline_hub, change, message):
    cfg = {key: value for key, value in {**prisma_sae_config(layer=0), **change}.items()
           if value is not ABSENT}
    add_prisma_sae(offline_hub, prisma_vanilla_repo(0), cfg, prisma_sae_state(768, 1536, seed=0))
    with pytest.raises(CorruptFileError, match=message):
        SAE.from_pretrained(VANILLA, "blocks.0.hook_resid_post")


def test_config_conversion_known_answers():
    """ViT-Prisma configs to SAELens's flat config, every key written out by hand."""
    common = {"d_in": 8, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
              "reshape_activations": "none", "hook_head_index": None,
              "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"}
    relu = sae_lens_config_from_prisma(prisma_sae_config(layer=4, d_in=8, expansion=3),
                                       where="x")
    assert relu == {**common, "d_sae": 24, "architecture": "standard",
                    "normalize_activations": "none", "hook_name": "blocks.4.hook_resid_post",
                    "seqpos_slice": (None,)}
    # TopK at both ends of the allowed k range (1 and d_sae); no normalize_activations key:
    # ViT-Prisma's default, layer norm.
    for k in (1, 16):
        topk = sae_lens_config_from_prisma(
            prisma_sae_config(layer=0, d_in=8, expansion=2, topk=k, cls_only=True), where="x")
        assert topk == {**common, "d_sae": 16, "architecture": "topk", "k": k,
                        "rescale_acts_by_decoder_norm": False,
                        "normalize_activations": "layer_norm",
                        "hook_name": "blocks.0.hook_resid_post", "seqpos_slice": (0, 1)}


def test_config_defaults_and_patch_positions():
    # Without `architecture`, ViT-Prisma's default: a standard SAE.
    cfg = prisma_sae_config(layer=1, d_in=8, expansion=2, use_patches_only=True,
                            layer_subtype="hook_mlp_out")
    del cfg["architecture"]
    out = sae_lens_config_from_prisma(cfg, where="x")
    assert out["architecture"] == "standard" and "k" not in out
    assert out["hook_name"] == "blocks.1.hook_mlp_out"
    assert out["seqpos_slice"] == (1, None)  # the patches: every token but the class token
    assert prisma_seqpos_slice({"use_patches_only": False}, "x") == (None,)


UNSTATED = (r"config\.json: the config has no activation_fn_str, so it does not say whether this "
            r"is a ReLU or a TopK SAE \(ViT-Prisma's default is 'topk', which then needs "
            r"activation_fn_kwargs\.k; older ViT-Prisma versions defaulted to 'relu'\)\. State "
            r"it: cfg_overrides=\{'activation_fn_str': 'relu'\}")


def unstated_vanilla(cache, layer=0, **extra):
    cfg = prisma_sae_config(layer=layer, **extra)
    del cfg["activation_fn_str"]
    state = prisma_sae_state(768, 1536, seed=layer)
    add_prisma_sae(cache, prisma_vanilla_repo(layer), cfg, state)
    return state


def test_a_config_without_activation_fn_str_is_refused(offline_hub):
    with pytest.raises(CorruptFileError, match=UNSTATED):
        sae_lens_config_from_prisma({"d_in": 8, "expansion_factor": 2, "hook_point_layer": 0},
                                    where="x/config.json")
    unstated_vanilla(offline_hub)
    with pytest.raises(CorruptFileError, match=UNSTATED):
        SAE.from_pretrained(VANILLA, "blocks.0.hook_resid_post")
    with pytest.raises(CorruptFileError, match=UNSTATED):
        read_prisma_sae_config("Prisma-Multimodal", prisma_vanilla_repo(0))


def test_a_stated_activation_loads_that_forward(offline_hub):
    state = unstated_vanilla(offline_hub)
    hook = "blocks.0.hook_resid_post"
    relu = rrm_plugin.load_saes(VANILLA, sae_ids=[hook],
                                cfg_overrides={"activation_fn_str": "relu"})[hook]
    topk = rrm_plugin.load_saes(VANILLA, sae_ids=[hook], cfg_overrides={
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 8}})[hook]
    assert isinstance(relu, StandardSAE) and isinstance(topk, TopKSAE) and topk.cfg.k == 8
    x = stream()
    for sae, k in ((relu, None), (topk, 8)):
        _, out_ref = prisma_forward(x, state, k=k)  # the file's normalisation (null: none)
        with torch.no_grad():
            torch.testing.assert_close(sae(x), out_ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(CorruptFileError, match=r"TopK SAE needs activation_fn_kwargs.k"):
        load_prisma_sae("Prisma-Multimodal", prisma_vanilla_repo(0),
                        cfg_overrides={"activation_fn_str": "topk"})


def test_a_statement_the_file_contradicts_is_refused(offline_hub):
    add_prisma_sae(offline_hub, prisma_vanilla_repo(0), prisma_sae_config(layer=0),
                   prisma_sae_state(768, 1536, seed=0))
    with pytest.raises(CorruptFileError, match=r"config\.json: activation_fn_str='relu' in the "
                                               r"file, but 'topk' was stated; remove the override"):
        load_prisma_sae("Prisma-Multimodal", prisma_vanilla_repo(0), cfg_overrides={
            "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 8}})
    add_prisma_sae(offline_hub, prisma_topk_cls_repo(0),
                   prisma_sae_config(layer=0, topk=64, cls_only=True),
                   prisma_sae_state(768, 1536, seed=0))
    with pytest.raises(CorruptFileError, match=r"activation_fn_kwargs=\{'k': 64\} in the file, but "
                                               r"\{'k': 8\} was stated"):
        load_prisma_sae("Prisma-Multimodal", prisma_topk_cls_repo(0),
                        cfg_overrides={"activation_fn_kwargs": {"k": 8}})
    # Stating what the file says is harmless.
    cfg, _, _ = load_prisma_sae("Prisma-Multimodal", prisma_vanilla_repo(0),
                                cfg_overrides={"activation_fn_str": "relu"})
    assert cfg["architecture"] == "standard" and "activation_fn_str" not in cfg


def test_normalisation_can_be_switched_by_override(offline_hub):
    state = prisma_sae_state(768, 1536, seed=0)
    add_prisma_sae(offline_hub, prisma_vanilla_repo(0), prisma_sae_config(layer=0), state)
    hook = "blocks.0.hook_resid_post"
    sae = rrm_plugin.load_saes(VANILLA, sae_ids=[hook],
                               cfg_overrides={"normalize_activations": "layer_norm"})[hook]
    assert sae.cfg.normalize_activations == "layer_norm"
    x = stream()
    with torch.no_grad():
        torch.testing.assert_close(sae(x), prisma_forward(x, state, layer_norm=True)[1],
                                   atol=1e-5 * x.abs().max().item(), rtol=1e-5)


def test_prisma_repo_is_the_org_and_name_unless_a_full_repo_is_given():
    assert prisma_repo("Prisma-Multimodal", "sae-a") == "Prisma-Multimodal/sae-a"
    assert prisma_repo("Prisma-Multimodal", "other-org/sae-b") == "other-org/sae-b"


def test_config_getter_returns_the_converted_config(offline_hub):
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    cfg = prisma_sae_config(layer=3, topk=64, cls_only=True)
    add_prisma_sae(offline_hub, prisma_topk_cls_repo(3), cfg, prisma_sae_state(768, 1536, 0))
    got = load_sae_config_from_huggingface(TOPK_CLS, "blocks.3.hook_resid_post")
    assert (got["d_in"], got["d_sae"], got["k"], got["architecture"]) == (768, 1536, 64, "topk")
    assert got["dtype"] == "float32" and got["device"] == "cpu"
    # The release's name for the model, not the upload's.
    assert got["metadata"]["model_name"] == "clip-vit-b32-datacomp"
    assert got["metadata"]["seqpos_slice"] == (0, 1)


def test_config_of_another_layer_is_refused_at_the_hook(offline_hub, tiny_vit):
    from rrm_plugin.replacement.splice import check_sae_for_hook

    cfg = prisma_sae_config(layer=3)  # uploaded under layer 0's repo name
    add_prisma_sae(offline_hub, prisma_vanilla_repo(0), cfg, prisma_sae_state(768, 1536, seed=0))
    sae = SAE.from_pretrained(VANILLA, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="trained at 'blocks.3.hook_resid_post'"):
        check_sae_for_hook(tiny_vit, "blocks.0.hook_resid_post", sae)


def test_loader_asks_the_hub_for_the_two_files_only(offline_hub, monkeypatch):
    from rrm_plugin.saes import prisma

    name = prisma_vanilla_repo(0)
    add_prisma_sae(offline_hub, name, prisma_sae_config(layer=0),
                   prisma_sae_state(768, 1536, seed=0))
    calls = record_hub_snapshots(monkeypatch, prisma)
    repo = f"Prisma-Multimodal/{name}"
    cfg, weights, sparsity = load_prisma_sae("Prisma-Multimodal", name)
    assert calls == [(repo, ["config.json"], False), (repo, ["config.json", "weights.pt"], False)]
    assert sparsity is None and cfg["device"] == "cpu"
    assert all(t.device.type == "cpu" for t in weights.values())
    calls.clear()
    cfg, weights, _ = load_prisma_sae("Prisma-Multimodal", name, device="meta",
                                      force_download=True)
    assert calls == [(repo, ["config.json"], True), (repo, ["config.json", "weights.pt"], True)]
    assert cfg["device"] == "meta" and all(t.is_meta for t in weights.values())


@pytest.mark.parametrize(("content", "message"), [
    (None, r"^Hugging Face repo 'Prisma-Multimodal/sae-x' has no config\.json$"),
    (b"{broken", r"/config\.json is not valid JSON \("),
    (b"[1, 2]", r"/config\.json holds a list, expected an object$"),
])
def test_unreadable_config_files_are_named(offline_hub, content, message):
    repo = "Prisma-Multimodal/sae-x"
    add_file(offline_hub, repo, "weights.pt", torch_bytes({}))
    if content is not None:
        add_file(offline_hub, repo, "config.json", content)
    with pytest.raises(CheckpointNotFoundError if content is None else CorruptFileError,
                       match=message):
        read_prisma_sae_config("Prisma-Multimodal", "sae-x")
