"""`load_faithfulness`: a run's JSON (plain or gzipped) read back into the same records, every
summary recomputed from them, and every malformed file refused with the broken key named."""

import copy
import json

import numpy as np
import pytest
import torch

from rrm_plugin.attribution.baselines import compute_baselines
from rrm_plugin.errors import CorruptFileError
from rrm_plugin.io import read_json, write_json
from rrm_plugin.metrics.faithfulness import FaithfulnessConfig, evaluate_faithfulness
from rrm_plugin.metrics.faithfulness_file import load_faithfulness
from rrm_plugin.metrics.faithfulness_result import AXES, MODES, QUANTITIES, SCORED
from tests.attribution.conftest import random_saes, sharp_vit

SWEEP = (0.0, 0.2, 0.5, 1.0)


@pytest.fixture(scope="module")
def run():
    """One small run of every method, shared: the tests only read it."""
    vit = sharp_vit()
    saes = random_saes(vit)
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    baselines = compute_baselines(vit, saes, images, statistic="median", progress=False)
    labels = vit(images).argmax(-1).detach()  # all correct by construction
    config = FaithfulnessConfig(sweep=SWEEP, batch_size=2, seed=3)
    return evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, config=config,
                                 progress=False)


@pytest.mark.parametrize("name", ["faithfulness.json", "faithfulness.json.gz"])
def test_round_trip_keeps_every_record_and_summary(run, tmp_path, name):
    path = write_json(tmp_path / name, run.to_json_dict())
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzipped
    got = load_faithfulness(path)
    assert got.config == run.config and got.image_indices == run.image_indices
    assert got.node_totals == run.node_totals
    assert got.influence_circuit == pytest.approx(run.influence_circuit, rel=0, abs=0)
    for m in run.methods:
        for mode in MODES:
            for q in QUANTITIES:
                assert np.array_equal(got.image_curves[m][mode][q], run.image_curves[m][mode][q])
    # Summaries are recomputed, identical to the run's own (float64 from the same records).
    assert (json.loads(json.dumps(got.to_json_dict()))
            == json.loads(json.dumps(run.to_json_dict())))
    assert got.table() == run.table()


def test_gzip_output_is_deterministic(run, tmp_path):
    a = write_json(tmp_path / "a.json.gz", run.to_json_dict()).read_bytes()
    b = write_json(tmp_path / "b.json.gz", run.to_json_dict()).read_bytes()
    assert a == b
    assert a[4:8] == b"\0\0\0\0"  # gzip's mtime field: no timestamp (two writes a second apart
    # would differ otherwise; within one second they agree anyway)


def _broken(run, tmp_path, edit):
    data = copy.deepcopy(json.loads(json.dumps(run.to_json_dict())))
    edit(data)
    return write_json(tmp_path / "broken.json", data)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("image_curves"), "missing ['image_curves']"),
    (lambda d: d["config"].update(colour="red"), "unknown settings ['colour']"),
    (lambda d: d["config"].update(criterion="best"), "invalid settings"),
    (lambda d: d.update(n_images=4), "n_images of them"),
    (lambda d: d.update(image_indices=[0, 0, 1, 2, 3]), "distinct"),
    (lambda d: d["image_curves"]["rrm"]["insertion"]["probability"].pop(),
     "rrm/insertion/probability has shape (4, 4), expected (5, 4)"),
    (lambda d: d["image_curves"]["neuron"]["deletion"]["logit"][2].append(0.0),
     "neuron/deletion/logit"),
    (lambda d: d["image_curves"]["random"]["deletion"].pop("accuracy"), "must hold"),
    (lambda d: d["image_curves"].pop("rrm_edge"), "differ from the settings"),
    (lambda d: d["node_totals"].update(rrm=0), "node_totals['rrm'] = 0"),
    (lambda d: d["image_curves"]["rrm"]["insertion"]["node_count"][0].__setitem__(3, 10 ** 6),
     "node counts outside"),
    (lambda d: d["image_curves"]["rrm"]["insertion"]["logit"][0].__setitem__(1, "x"),
     "rrm/insertion/logit is not a table of numbers"),
    (lambda d: d["image_curves"]["rrm"]["insertion"]["logit"][0].__setitem__(1, float("nan")),
     "non-finite"),
    (lambda d: d["influence_circuit"].update(nodes="many"), "influence_circuit"),
])
def test_malformed_files_are_refused_naming_the_problem(run, tmp_path, edit, message):
    path = _broken(run, tmp_path, edit)
    with pytest.raises(CorruptFileError, match="not a faithfulness run") as err:
        load_faithfulness(path)
    assert message in str(err.value)


def test_not_json_and_truncated_gzip_are_refused(run, tmp_path):
    (tmp_path / "a.json").write_text("[1, 2")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_faithfulness(tmp_path / "a.json")
    whole = write_json(tmp_path / "b.json.gz", run.to_json_dict()).read_bytes()
    (tmp_path / "b.json.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_faithfulness(tmp_path / "b.json.gz")
    write_json(tmp_path / "c.json", [1, 2])
    with pytest.raises(CorruptFileError, match="expected a JSON object"):
        load_faithfulness(tmp_path / "c.json")


def test_stored_summaries_of_a_run_equal_the_recomputed_ones(run, tmp_path):
    """What the loader recomputes is what the run wrote (the summaries are not trusted)."""
    path = write_json(tmp_path / "run.json", run.to_json_dict())
    stored, got = read_json(path), load_faithfulness(path)
    for axis in AXES:
        for m in run.methods:
            for mode in MODES:
                for q in SCORED:
                    want = stored["auc"][axis][m][mode][q]
                    assert got.auc(m, mode, q, axis=axis)._asdict() == want
