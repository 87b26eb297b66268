"""Per-position baselines through the host cache: values, round trip, mismatch errors."""

import pytest
import torch

from rrm_plugin.attribution.baselines import Baselines, compute_baselines, load_release_baselines
from rrm_plugin.io import CorruptFileError
from rrm_plugin.replacement.splice import replacement
from tests.attribution.conftest import random_saes


def test_median_and_mean_are_per_position_statistics(vit, saes, reference_images):
    with torch.no_grad(), replacement(vit, saes, keep_error=True):
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
    with pytest.raises(KeyError, match="unknown SAE release 'nope'"):
        load_release_baselines("nope")
