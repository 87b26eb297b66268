"""The explained-variance check: a hand-built SAE that reconstructs a model's activations exactly
under the right normalisation and loses a known part of them under the wrong one.

The model's residual stream gets large per-token offsets along the all-ones direction (its
position embedding adds `c_t * 1`). The SAE encodes with `[P, -P]` and decodes with `[P^T; -P^T]`,
`P` an orthonormal basis of the complement of `1`, so it reconstructs `P P^T x`: everything but
the per-token mean. With layer norm (which removes that mean and restores it after decoding) the
reconstruction is exact; without, the residual is the per-token mean, whose share of the variance
the oracle computes in float64 from the activations alone.
"""

import warnings

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.loading.pretrained_saes_directory import (
    PretrainedSAELookup,
    get_pretrained_saes_directory,
)
from sae_lens.saes.sae import SAEMetadata

import rrm_plugin
from rrm_plugin.metrics.sae_sanity import (
    EV_WARNING_RATIO,
    ExplainedVarianceWarning,
    check_explained_variance,
    documented_explained_variance,
    explained_variance_warning,
    measured_explained_variance,
    release_warnings,
)
from rrm_plugin.zoo.releases import HUB_SAE_RELEASES, PRISMA_TOPK_CLS_EV, PRISMA_VANILLA_EV

HOOK = "blocks.0.hook_resid_post"
DOCUMENTED = 0.95


def offset_model(tiny_vit):
    g = torch.Generator().manual_seed(3)
    n_tokens, d = tiny_vit.pos_embed.W_pos.shape
    with torch.no_grad():
        tiny_vit.pos_embed.W_pos += 20 * torch.randn(n_tokens, 1, generator=g)
    return tiny_vit


def complement_sae(d: int, *, normalisation: str) -> StandardSAE:
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(d, 1), torch.randn(d, d - 1, generator=g)],
                                         dim=1))
    p = basis[:, 1:]  # orthonormal, orthogonal to the ones vector
    cfg = StandardSAEConfig(d_in=d, d_sae=2 * (d - 1), normalize_activations=normalisation,
                            apply_b_dec_to_input=True,
                            metadata=SAEMetadata(model_name="tiny", hook_name=HOOK))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([p, -p], dim=1))
        sae.W_dec.copy_(torch.cat([p.T, -p.T], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def mean_share_oracle(model, images, positions=slice(None)) -> float:
    """1 - (variance carried by the per-token means) / (total variance), in float64."""
    _, cache = model.run_with_cache(images, names_filter=lambda n: n == HOOK)
    x = cache[HOOK][:, positions].double().reshape(-1, cache[HOOK].shape[-1])
    residual = x.shape[1] * x.mean(1).pow(2).sum()  # ||m_t 1||^2 summed over tokens
    total = (x - x.mean(0)).pow(2).sum()
    return float(1 - residual / total)


@pytest.fixture
def documented_release(monkeypatch):
    """A release entry in SAELens's directory that documents DOCUMENTED for HOOK."""
    release = "hand-built-documented"
    entry = PretrainedSAELookup(
        release=release, repo_id="unused", model="tiny", conversion_func=None,
        saes_map={HOOK: HOOK}, expected_var_explained={HOOK: DOCUMENTED}, expected_l0={},
        neuronpedia_id={}, norm_scaling_factor={}, config_overrides=None)
    monkeypatch.setitem(get_pretrained_saes_directory(), release, entry)
    return release


def test_right_normalisation_no_warning_wrong_one_warns(tiny_vit, tiny_images,
                                                        documented_release):
    model = offset_model(tiny_vit)
    right = {HOOK: complement_sae(16, normalisation="layer_norm")}
    wrong = {HOOK: complement_sae(16, normalisation="none")}
    ev_right = measured_explained_variance(model, right, tiny_images)[HOOK]
    ev_wrong = measured_explained_variance(model, wrong, tiny_images)[HOOK]
    oracle = mean_share_oracle(model, tiny_images)
    # Exact reconstruction up to float32 and the layer norm's eps (1e-5 against stds near 1).
    assert ev_right == pytest.approx(1, abs=1e-4)
    # Two float32 passes against a float64 sum: relative 1e-4 is far above their rounding.
    assert ev_wrong == pytest.approx(oracle, rel=1e-4, abs=1e-4)
    assert ev_wrong < EV_WARNING_RATIO * DOCUMENTED  # the offsets dominate the variance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_explained_variance(model, right, tiny_images,
                                        release=documented_release) == []
    with pytest.warns(ExplainedVarianceWarning) as caught:
        messages = check_explained_variance(model, wrong, tiny_images,
                                            release=documented_release)
    assert [str(w.message) for w in caught] == messages and len(messages) == 1
    message = messages[0]
    assert message.startswith(f"SAE {documented_release}/{HOOK}: explained variance "
                              f"{ev_wrong:.3f} on these images, but its release documents 0.950")
    assert "likely cause is input normalisation" in message
    assert "normalize_activations='none'" in message
    assert "cfg_overrides={'normalize_activations': 'layer_norm'}" in message


def test_the_check_measures_the_sae_positions_only(tiny_vit, tiny_images):
    model = offset_model(tiny_vit)
    sae = complement_sae(16, normalisation="none")
    sae.cfg.metadata.seqpos_slice = (0, 1)  # a class-token SAE
    measured = measured_explained_variance(model, {HOOK: sae}, tiny_images)[HOOK]
    oracle = mean_share_oracle(model, tiny_images, slice(0, 1))
    assert oracle != pytest.approx(mean_share_oracle(model, tiny_images), abs=0.1)
    # float32 passes against a float64 sum; the class token's total variance is small (only
    # the images vary it), so the tolerance is relative.
    assert measured == pytest.approx(oracle, rel=1e-3)


def test_the_check_uses_a_few_images_only(tiny_vit, tiny_images, documented_release,
                                          monkeypatch):
    seen = []
    real = tiny_vit.run_with_cache
    monkeypatch.setattr(tiny_vit, "run_with_cache", lambda x, **kw: seen.append(len(x)) or real(
        x, **kw))
    many = torch.cat([tiny_images] * 5)
    check_explained_variance(tiny_vit, {HOOK: complement_sae(16, normalisation="layer_norm")},
                             many, release=documented_release, n_images=4)
    assert seen == [4]


@pytest.mark.parametrize(("measured", "warns"), [
    (0.95, False), (0.6, False), (0.475, False), (0.474, True), (0.1, True), (-2.0, True)])
def test_threshold_is_half_the_documented_value(measured, warns):
    assert EV_WARNING_RATIO == 0.5  # documented 0.95: the line sits at 0.475
    message = explained_variance_warning(name="r/h", measured=measured, documented=DOCUMENTED,
                                         normalisation="layer_norm")
    assert (message is not None) == warns
    if warns:
        assert f"{measured:.3f}" in message and "0.950" in message
        assert "{'normalize_activations': 'none'}" in message


def test_a_release_without_documented_values_says_so_and_skips(tiny_vit, tiny_images, caplog):
    release = "rrm-vit-b16-imagenet"  # the RRM authors document no per-SAE explained variance
    rrm_plugin.list_releases()  # importing the zoo registers the releases
    assert documented_explained_variance(release) == {}
    saes = {HOOK: complement_sae(16, normalisation="none")}
    assert release_warnings(release, saes, {HOOK: -5.0}) == [
        "release 'rrm-vit-b16-imagenet' documents no explained variance: normalisation check "
        "skipped"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level("INFO"):
            assert check_explained_variance(tiny_vit, saes, tiny_images, release=release) == []
    assert "documents no explained variance" in caplog.text


def test_prisma_releases_record_their_documented_values():
    from rrm_plugin.zoo.releases import register_releases

    register_releases()
    for release, values in (("prisma-clip-b32-vanilla-x64", PRISMA_VANILLA_EV),
                            ("prisma-clip-b32-topk64-cls", PRISMA_TOPK_CLS_EV)):
        documented = documented_explained_variance(release)
        hooks = [layer.hook_name for layer in HUB_SAE_RELEASES[release].layers]
        assert documented == dict(zip(hooks, values, strict=True))
    # Spot values from ViT-Prisma's table: vanilla layer 2 (stronger L1), TopK layer 11.
    assert PRISMA_VANILLA_EV[2] == 0.906 and PRISMA_TOPK_CLS_EV[11] == 0.84


@pytest.fixture
def saved_release(tmp_path, tiny_vit):
    """A local release holding the complement SAE saved without normalisation, documenting
    DOCUMENTED for it."""
    from rrm_plugin.saes import registry

    release = "hand-built-local"
    complement_sae(16, normalisation="none").save_model(tmp_path / "release" / HOOK)
    rrm_plugin.register_sae_release(release, tmp_path / "release", model_name="tiny")
    get_pretrained_saes_directory()[release].expected_var_explained = {HOOK: DOCUMENTED}
    yield release
    get_pretrained_saes_directory().pop(release)
    registry._LOCAL_RELEASES.pop(release)


def test_load_saes_with_images_warns_and_the_override_switches(tiny_vit, tiny_images,
                                                               saved_release):
    model = offset_model(tiny_vit)
    with pytest.warns(ExplainedVarianceWarning, match=r"likely cause is input normalisation"):
        saes = rrm_plugin.load_saes(saved_release, model=model, images=tiny_images)
    assert saes[HOOK].cfg.normalize_activations == "none"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExplainedVarianceWarning)
        saes = rrm_plugin.load_saes(saved_release, model=model, images=tiny_images,
                                    cfg_overrides={"normalize_activations": "layer_norm"})
    assert saes[HOOK].cfg.normalize_activations == "layer_norm"
    with warnings.catch_warnings():  # no images: no check
        warnings.simplefilter("error", ExplainedVarianceWarning)
        rrm_plugin.load_saes(saved_release, model=model)


def test_load_saes_images_need_the_model(saved_release, tiny_images):
    with pytest.raises(ValueError, match=r"load_saes\(images=\.\.\.\) .*pass model= too"):
        rrm_plugin.load_saes(saved_release, images=tiny_images)
