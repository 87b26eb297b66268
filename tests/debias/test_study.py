"""The seeded study: each seed's own splits, the summary across seeds by hand, old JSON refused."""

import dataclasses
import json
import math

import pytest
import torch

import rrm_plugin.workflows.debias as workflow
from rrm_plugin.data.spurious import (
    SpuriousConfig,
    spurious_seed_splits,
    spurious_test_set,
    spurious_validation_set,
)
from rrm_plugin.debias.experiment import RRM, DebiasConfig
from rrm_plugin.debias.plot import plot_debias
from rrm_plugin.debias.study import load_study, markdown_table, mean_se, summarise_seeds


def seed_dict(seed, worst):
    """A per-seed dict with two methods; `worst` = (original, circuit) worst-group accuracy."""
    def method(w, n):
        return {"worst_group": w, "average": 0.5 + w / 2, "agree": 1.0, "conflict": w,
                "per_group": {}, "n_units": n, "unit_kind": "feature" if n else None,
                "units": {}, "validation": {}}
    return {"seed": seed, "methods": {"original": method(worst[0], 0), RRM: method(worst[1], 4)},
            "dfr": {}, "split_sizes": {}, "test_group_sizes": {},
            "same_units_circuit_and_plain": seed % 2 == 0}


def test_summary_across_seeds_known_answer():
    seeds = [seed_dict(0, (0.2, 0.5)), seed_dict(1, (0.4, 0.6)), seed_dict(2, (0.3, 0.7))]
    study = summarise_seeds(seeds, config={}, metadata={})
    original = study["summary"]["original"]
    # Mean 0.3; sample std 0.1; s.e. 0.1 / sqrt 3.
    assert original["worst_group"]["mean"] == pytest.approx(0.3)
    assert original["worst_group"]["se"] == pytest.approx(0.1 / math.sqrt(3))
    # Paired per seed: -0.3, -0.2, -0.4 -> mean -0.3, sample std 0.1.
    diff = original["worst_group_minus_circuit"]
    assert diff["mean"] == pytest.approx(-0.3) and diff["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert study["summary"][RRM]["n_units"] == {"mean": 4.0, "se": 0.0}
    assert study["same_units_circuit_and_plain"] == 2
    assert study["seeds"] == [0, 1, 2]
    table = markdown_table(study)
    assert "| original model (no ablation) | 30.0 ± 5.8 |" in table
    assert mean_se([1.0]) == {"mean": 1.0, "se": 0.0}


def test_old_formats_are_refused_clearly(tmp_path):
    old = tmp_path / "debias.json"
    old.write_text(json.dumps({"format": "rrm-debias/1", "methods": {}}))
    with pytest.raises(ValueError, match="format 'rrm-debias/1' is not 'rrm-debias-study/2'.*"
                                         "Rerun `rrm debias --seeds N"):
        load_study(old)
    with pytest.raises(ValueError, match="older `rrm debias`"):
        plot_debias({"methods": {}})
    study = summarise_seeds([seed_dict(0, (0.2, 0.5))], config={}, metadata={})
    new = tmp_path / "new.json"
    new.write_text(json.dumps(study))
    assert load_study(new) == study


def test_seed_splits_are_independent_and_seed_zero_is_the_shipped_one():
    s0, v0, t0 = spurious_seed_splits(0, pool=64)
    s1, v1, t1 = spurious_seed_splits(1, pool=64)
    assert torch.equal(t0.images, spurious_test_set().images)
    assert torch.equal(v0.images, spurious_validation_set().images)
    for a, b in ((s0, s1), (v0, v1), (t0, t1)):
        assert not torch.equal(a.images, b.images)
    # Same source digits in every seed (the models' splits), rendered anew.
    assert torch.equal(t0.source_index, t1.source_index)
    assert torch.equal(t0.labels, t1.labels)
    assert not torch.equal(t0.markers, t1.markers)
    assert not set(s1.source_index.tolist()) & set(t1.source_index.tolist())
    assert not set(v1.source_index.tolist()) & set(t1.source_index.tolist())


@pytest.mark.parametrize("cue", ["marker", "stroke"])
def test_every_seed_runs_on_its_own_splits_with_its_own_seed(monkeypatch, cue):
    seen = []

    class Fake:
        def __init__(self, seed):
            self.seed = seed

        def to_json_dict(self):
            return seed_dict(self.seed, (0.1, 0.2))

    def fake_run_debias(model, saes, *, selection, validation, test, baselines, config,
                        reference_model):
        seen.append((config.seed, selection, validation, test, reference_model is not None))
        return Fake(config.seed)

    monkeypatch.setattr(workflow, "run_debias", fake_run_debias)
    settings = workflow.StudySettings(
        model=None, release="rrm-digits-vit-spurious", reference_model=None, data=None,
        baselines=None, pool=40, device="cpu", dtype=None, config=DebiasConfig(seed=99),
        benchmark=SpuriousConfig(cue=cue))
    study = workflow.debias_study([2, 5], settings, workers=1, progress=False)
    assert [s[0] for s in seen] == [2, 5] and study["seeds"] == [2, 5]
    for seed, selection, validation, test, _ in seen:
        want = spurious_seed_splits(seed, pool=40, cfg=SpuriousConfig(cue=cue))
        for got, expected in zip((selection, validation, test), want, strict=True):
            assert torch.equal(got.images, expected.images)
            assert torch.equal(got.spurious, expected.markers)
    with pytest.raises(ValueError, match="one fixed set of splits"):
        workflow.debias_study([0, 1], dataclasses.replace(settings, data="x"))
