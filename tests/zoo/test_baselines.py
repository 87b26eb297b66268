"""Which baselines file belongs to a named release: shipped, or in the user cache."""

import pytest

from rrm_plugin.zoo.baselines import (
    cached_baselines_path,
    load_release_baselines,
    release_baselines_path,
)
from tests.attribution.conftest import random_saes, sharp_vit


def test_release_baseline_paths(tmp_path, monkeypatch):
    from rrm_plugin.zoo.releases import SAE_RELEASES, SAEReleaseSpec

    assert cached_baselines_path(str(tmp_path)) == tmp_path / "baselines.safetensors"
    monkeypatch.setenv("RRM_PLUGIN_CACHE", str(tmp_path / "cache"))
    assert cached_baselines_path("some-hub-release") == \
        tmp_path / "cache" / "baselines" / "some-hub-release.safetensors"
    shipped = SAE_RELEASES["rrm-digits-vit"].directory
    assert release_baselines_path("rrm-digits-vit") == shipped / "baselines.safetensors"
    loaded = load_release_baselines("rrm-digits-vit")
    assert (loaded.statistic, loaded.n_images) == ("median", 2048)
    with pytest.raises(ValueError, match="have d_sae=128, SAE has 32"):  # checked against saes
        load_release_baselines("rrm-digits-vit", random_saes(sharp_vit(), layers=[0]))
    monkeypatch.setitem(SAE_RELEASES, "empty", SAEReleaseSpec("empty", "m", tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no baselines for release 'empty' at .*; "
                                                r"create them with `rrm baselines --release "
                                                r"empty`"):
        load_release_baselines("empty")


def test_unknown_release_is_named():
    with pytest.raises(KeyError, match="unknown SAE release 'nope'"):
        load_release_baselines("nope")
