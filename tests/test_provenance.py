"""Provenance fingerprints: SAEs record their model, baselines their model and SAEs; loading a
mismatched set raises a message naming both sides (issue 15 section 1)."""

import pytest
import torch

from rrm_plugin.attribution.baselines import Baselines, compute_baselines
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.provenance import (
    SAE_WEIGHTS,
    ProvenanceError,
    fingerprint,
    model_fingerprint,
    sae_fingerprint,
)
from rrm_plugin.saes.pipeline import train_sae_release
from rrm_plugin.saes.registry import load_saes, register_sae_release
from rrm_plugin.saes.training import TopKTrainingConfig, new_topk_sae
from rrm_plugin.zoo.models import load_model_from_directory, save_model
from tests.cli.conftest import expect_user_error
from tests.conftest import tiny_vit_config


def test_fingerprint_sees_every_weight_and_survives_a_dtype_cast(tmp_path):
    model = build_hooked_vit(tiny_vit_config(), seed=0).eval()
    state = model.state_dict()
    base = fingerprint(state)
    for name in ("blocks.1.attn.W_Q", "head.b_H"):  # one value changed anywhere -> new hash
        edited = {k: v.clone() for k, v in state.items()}
        edited[name].view(-1)[0] += 1e-6
        assert fingerprint(edited) != base, name
    save_model(model, tmp_path / "m")
    loaded = load_model_from_directory(tmp_path / "m")
    assert model_fingerprint(loaded) == base
    from rrm_plugin.zoo.models import to_device

    assert model_fingerprint(to_device(loaded, dtype="float64")) == base  # recorded at load
    # A model built in Python (as the hub models are) is fingerprinted before the cast.
    fresh = build_hooked_vit(tiny_vit_config(), seed=0).eval()
    assert model_fingerprint(to_device(fresh, dtype="float64")) == base


def test_fingerprint_of_scalar_tensors():
    # CLIP-like heads hold 0-dim parameters (a logit scale); their value and shape both count.
    one = {"scale": torch.tensor(2.0)}
    assert fingerprint(one) != fingerprint({"scale": torch.tensor(3.0)})
    assert fingerprint(one) != fingerprint({"scale": torch.tensor([2.0])})


def test_fingerprint_counts_names_and_dtypes_and_covers_every_sae_weight():
    # The same values under another name, or in another dtype, are other weights.
    a, b = torch.arange(4.0), torch.arange(4.0) + 1
    assert fingerprint({"x": a}) != fingerprint({"y": a})
    assert fingerprint({"x": a}) != fingerprint({"x": a.double()})
    assert fingerprint({"x": a, "y": b}) == fingerprint({"y": b, "x": a})  # order-free
    sae = new_topk_sae(d_in=4, d_sae=6, k=2, hook_name="blocks.0.hook_resid_post", model_name="m")
    base = sae_fingerprint(sae)
    for name in SAE_WEIGHTS:
        with torch.no_grad():
            getattr(sae, name).view(-1)[0] += 1.0
        assert sae_fingerprint(sae) != base, name
        base = sae_fingerprint(sae)


@pytest.fixture
def trained(tmp_path):
    model = build_hooked_vit(tiny_vit_config(), seed=0).eval()
    other = build_hooked_vit(tiny_vit_config(), seed=1).eval()
    save_model(model, tmp_path / "model")
    save_model(other, tmp_path / "other")
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = TopKTrainingConfig(d_sae=12, k=2, n_steps=3)
    configs = {"blocks.0.hook_resid_post": cfg, "blocks.1.hook_resid_post": cfg}
    train_sae_release(model, images, configs, model_name="tiny", out=tmp_path / "rel",
                      progress=False)
    register_sae_release("prov-test", tmp_path / "rel", model_name="tiny")
    return tmp_path, model, other, images


def test_saes_trained_on_other_weights_are_refused(trained):
    tmp_path, model, other, _ = trained
    assert set(load_saes("prov-test", model=model)) == {"blocks.0.hook_resid_post",
                                                        "blocks.1.hook_resid_post"}
    with pytest.raises(ProvenanceError, match=r"SAE release 'prov-test' was trained on model "
                                              r"'tiny' with weights \w+, but the model given has"):
        load_saes("prov-test", model=other)
    # A release folder edited after training (two weights files swapped) is refused as well.
    rel, name = tmp_path / "rel", "sae_weights.safetensors"
    a, b = rel / "blocks.0.hook_resid_post" / name, rel / "blocks.1.hook_resid_post" / name
    a.rename(rel / "tmp")
    b.rename(a)
    (rel / "tmp").rename(b)
    register_sae_release("prov-test-swapped", rel, model_name="tiny")
    with pytest.raises(ProvenanceError, match="does not match the weights its release recorded"):
        load_saes("prov-test-swapped")


def test_baselines_of_other_model_or_saes_are_refused(trained, tmp_path):
    _, model, other, images = trained
    saes = load_saes("prov-test", model=model)
    baselines = compute_baselines(model, saes, images, progress=False)
    baselines.save(tmp_path / "b.safetensors")
    loaded = Baselines.load(tmp_path / "b.safetensors")
    assert loaded.model_fingerprint == model_fingerprint(model)
    loaded.check(saes, model=model)
    with pytest.raises(ProvenanceError, match="baselines were computed on model weights"):
        loaded.check(saes, model=other)
    changed = {h: s for h, s in saes.items()}
    with torch.no_grad():
        changed["blocks.1.hook_resid_post"].W_dec.mul_(1.01)
    with pytest.raises(ProvenanceError, match="computed for different SAE weights"):
        loaded.check(changed, model=model)


def test_cli_refuses_a_mismatched_model_and_release(trained, capsys):
    tmp_path, *_ = trained
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (30, 90, 200)).save(images / "a.png")
    expect_user_error(capsys, ["eval-saes", "--model", str(tmp_path / "other"), "--release",
                               str(tmp_path / "rel"), "--images", str(images),
                               "--out", str(tmp_path / "e.json")],
                      r"was trained on model 'tiny' with weights \w+, but the model given")
