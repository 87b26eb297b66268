"""Per-position baselines through the host cache: values, round trip, mismatch errors."""

import dataclasses

import pytest
import torch

from rrm_plugin.attribution.baselines import (
    Baselines,
    compute_baselines,
    require_baselines,
)
from rrm_plugin.io import CorruptFileError, write_tensors
from rrm_plugin.provenance import sae_fingerprint
from rrm_plugin.replacement.splice import splice_saes
from tests.attribution.conftest import random_saes, sharp_vit


def test_median_and_mean_are_per_position_statistics(vit, saes, reference_images):
    with torch.no_grad(), splice_saes(vit, saes, keep_error=True):
        _, cache = vit.run_with_cache(reference_images)
    med = compute_baselines(vit, saes, reference_images, statistic="median", batch_size=7,
                            progress=False)
    mean = compute_baselines(vit, saes, reference_images, statistic="mean", progress=False)
    for h in saes:
        acts = cache[f"{h}.hook_sae_acts_post"]
        assert med.features[h].shape == (5, 32)
        torch.testing.assert_close(med.features[h], acts.median(0).values)
        torch.testing.assert_close(mean.features[h], acts.mean(0))
        torch.testing.assert_close(med.errors[h], cache[f"{h}.hook_sae_error"].median(0).values)
        torch.testing.assert_close(mean.resid[h], cache[h + ".hook_sae_input"].mean(0))
    assert med.n_images == 24 and med.statistic == "median"
    # Median of sparse TopK activations is mostly zero, but not everywhere for every latent.
    assert (med.features["blocks.0.hook_resid_post"] == 0).float().mean() > 0.5


def test_save_load_round_trip_and_checks(tmp_path, vit, saes, baselines):
    path = baselines.save(tmp_path / "baselines.safetensors")
    loaded = Baselines.load(path)
    assert loaded.statistic == "median" and loaded.n_images == baselines.n_images
    for kind in ("features", "errors", "resid"):
        for h in saes:
            assert torch.equal(getattr(loaded, kind)[h], getattr(baselines, kind)[h])
    loaded.check(saes, n_tokens=5)
    other = random_saes(vit)
    other["blocks.0.hook_resid_post"].W_dec.data.mul_(2)
    with pytest.raises(ValueError, match="different SAE weights"):
        loaded.check(other)
    with pytest.raises(ValueError, match="5 token positions, the images give 7"):
        loaded.check(saes, n_tokens=7)
    with pytest.raises(ValueError, match="d_sae=32, SAE has 8"):
        loaded.check({"blocks.0.hook_resid_post": random_saes(vit, d_sae=8, layers=[0])[
            "blocks.0.hook_resid_post"]})
    with pytest.raises(KeyError, match="no entry for SAE hook"):
        loaded.check({"blocks.2.hook_resid_post": saes["blocks.0.hook_resid_post"]})


def test_bad_inputs_and_files(tmp_path, vit, saes, reference_images):
    with pytest.raises(ValueError, match="unknown baseline statistic 'mode'"):
        compute_baselines(vit, saes, reference_images, statistic="mode", progress=False)
    with pytest.raises(ValueError, match="at least one reference image"):
        compute_baselines(vit, saes, reference_images[:0], progress=False)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError, match="not a readable safetensors"):
        Baselines.load(tmp_path / "bad.safetensors")


def test_zero_baselines():
    model = sharp_vit()
    saes = random_saes(model, d_sae=8)
    zero = Baselines.zeros(saes, n_tokens=5)
    assert (zero.statistic, zero.n_images, zero.model_fingerprint) == ("zero", 0, None)
    assert zero.hook_names == list(saes)
    for h, sae in saes.items():
        assert torch.equal(zero.features[h], torch.zeros(5, 8))
        assert torch.equal(zero.errors[h], torch.zeros(5, 16))
        assert torch.equal(zero.resid[h], torch.zeros(5, 16))
        assert zero.fingerprints[h] == sae_fingerprint(sae)
    zero.check(saes, n_tokens=5, model=model)  # no model fingerprint: any model


def test_to_keeps_every_field(baselines):
    moved = baselines.to("cpu")
    assert (moved.statistic, moved.n_images, moved.model_fingerprint, moved.fingerprints) == (
        baselines.statistic, baselines.n_images, baselines.model_fingerprint,
        baselines.fingerprints)
    for kind in ("features", "errors", "resid"):
        assert getattr(moved, kind).keys() == getattr(baselines, kind).keys()
        for h, value in getattr(baselines, kind).items():
            assert torch.equal(getattr(moved, kind)[h], value)


def test_model_fingerprint_is_checked_and_saved(tmp_path, vit, saes, baselines):
    from rrm_plugin.provenance import ProvenanceError, model_fingerprint

    assert baselines.model_fingerprint == model_fingerprint(vit)
    baselines.check(saes, model=vit)
    other = sharp_vit(n_layers=4)
    with pytest.raises(ProvenanceError, match=rf"baselines were computed on model weights "
                                              rf"{baselines.model_fingerprint}, the model given "
                                              rf"has weights {model_fingerprint(other)}"):
        baselines.check(saes, model=other)
    loaded = Baselines.load(baselines.save(tmp_path / "b.safetensors"))
    assert loaded.model_fingerprint == baselines.model_fingerprint
    assert loaded.fingerprints == baselines.fingerprints == {
        h: sae_fingerprint(s) for h, s in saes.items()}
    zero = Baselines.load(Baselines.zeros(saes, n_tokens=5).save(tmp_path / "z.safetensors"))
    assert (zero.statistic, zero.n_images, zero.model_fingerprint) == ("zero", 0, None)


def test_baselines_without_sae_fingerprints_are_not_matched(saes):
    unknown = dataclasses.replace(Baselines.zeros(saes, n_tokens=5), fingerprints={})
    other = random_saes(sharp_vit())
    other["blocks.0.hook_resid_post"].W_dec.data.mul_(2)
    unknown.check(other)  # same shapes, other weights
    with pytest.raises(ValueError, match="different SAE weights"):
        Baselines.zeros(saes, n_tokens=5).check(other)


BAD_FILES = {
    "no statistic": ({"features/h": torch.zeros(1)}, {}, "has no baselines metadata"),
    "unknown kind": ({"weights/h": torch.zeros(1)}, {"statistic": "mean"},
                     "unexpected tensor 'weights/h' in a baselines file"),
    "no hook": ({"features": torch.zeros(1)}, {"statistic": "mean"},
                "unexpected tensor 'features' in a baselines file"),
    "errors of another hook": ({"features/a": torch.zeros(1), "errors/b": torch.zeros(1),
                                "resid/a": torch.zeros(1)}, {"statistic": "mean"},
                               "features/errors/resid cover different hook points"),
    "resid of another hook": ({"features/a": torch.zeros(1), "errors/a": torch.zeros(1),
                               "resid/b": torch.zeros(1)}, {"statistic": "mean"},
                              "features/errors/resid cover different hook points"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_baseline_files_are_named(tmp_path, case):
    tensors, metadata, message = BAD_FILES[case]
    write_tensors(tmp_path / "b.safetensors", tensors, metadata=metadata)
    with pytest.raises(CorruptFileError, match=message):
        Baselines.load(tmp_path / "b.safetensors")


def test_minimal_file_loads_with_defaults(tmp_path):
    tensors = {"features/a/b": torch.ones(2, 3), "errors/a/b": torch.zeros(2, 4),
               "resid/a/b": torch.zeros(2, 4)}  # hook names may hold "/"
    write_tensors(tmp_path / "b.safetensors", tensors,
                  metadata={"statistic": "mean", "fingerprint/a/b": "f00d"})
    loaded = Baselines.load(tmp_path / "b.safetensors")
    assert (loaded.statistic, loaded.n_images, loaded.model_fingerprint) == ("mean", 0, None)
    assert loaded.fingerprints == {"a/b": "f00d"} and loaded.hook_names == ["a/b"]
    assert torch.equal(loaded.features["a/b"], torch.ones(2, 3))


def test_require_baselines(baselines):
    assert require_baselines(baselines, caller="x") is baselines
    with pytest.raises(TypeError, match=r"^prune needs baselines=, got 'median': e\.g\. "
                                        r"load_release_baselines\(release, saes\) from "
                                        r"rrm_plugin\.zoo\.baselines, "
                                        r"compute_baselines\(model, saes, images\) or "
                                        r"Baselines\.zeros\(saes, n_tokens=\.\.\.\) from "
                                        r"rrm_plugin\.attribution\.baselines$"):
        require_baselines("median", caller="prune")
