"""CUDA paths against the CPU (issue 28). Marked `cuda`; skipped without a CUDA device
(`bash benchmarks/gpu_check.sh` runs them first on a GPU machine).

The same seeded tiny model, SAEs and images on both devices, float32 with TF32 off; the
tolerances are those of `benchmarks/gpu_compare.py` (which justifies them): 1e-4 relative on
graph floats, exact node sets, 1e-3 scaled on faithfulness curves.
"""

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch

from rrm_plugin.attribution.baselines import compute_baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig
from rrm_plugin.metrics.faithfulness import FaithfulnessConfig, evaluate_faithfulness
from rrm_plugin.replacement.interventions import FeatureIntervention, intervention_hooks
from rrm_plugin.replacement.splice import splice_saes
from tests.attribution.conftest import random_saes, sharp_vit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gpu_compare import CURVE_ATOL, GRAPH_RTOL, compare_graphs, rel_diff  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 off for the test only (restored after): CPU-equal float32 matmuls."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def setups():
    """`{device: (model, saes, baselines)}`, the same weights on both devices."""
    vit = sharp_vit()
    saes = random_saes(vit)
    reference = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = {}
    for device in ("cpu", "cuda"):
        model = copy.deepcopy(vit).to(device)
        moved = {h: copy.deepcopy(s).to(device) for h, s in saes.items()}
        out[device] = (model, moved, compute_baselines(model, moved, reference.to(device),
                                                       progress=False))
    return out


@pytest.fixture
def images():
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_baselines_on_cuda_equal_the_cpu_baselines(setups):
    cpu, cuda = setups["cpu"][2], setups["cuda"][2]
    for h in cpu.features:
        assert rel_diff(cuda.features[h], cpu.features[h]) <= GRAPH_RTOL
        assert rel_diff(cuda.errors[h], cpu.errors[h]) <= GRAPH_RTOL


@pytest.mark.parametrize("granularity,top_k", [("feature", None), ("token", None),
                                               ("token", 3)])
@pytest.mark.parametrize("images_per_step", [1, 3])
def test_graphs_on_cuda_equal_the_cpu_graphs(setups, images, granularity, top_k,
                                             images_per_step):
    engine = EngineConfig(images_per_step=images_per_step, token_top_k=top_k)
    graphs = {d: attribute(m, s, images.to(d), baselines=b, granularity=granularity,
                           engine=engine) for d, (m, s, b) in setups.items()}
    for cpu, cuda in zip(graphs["cpu"], graphs["cuda"], strict=True):
        result = compare_graphs(cpu, cuda)
        assert result.ok, result.problems
        # Graphs come back on the CPU whatever the model's device.
        assert all(e.device.type == "cpu" for e in cuda.edges)
        assert all(layer.scores.device.type == "cpu" for layer in cuda.layers)


def test_replacement_mode_and_interventions_on_cuda_equal_the_cpu(setups, images):
    logits = {}
    for device, (model, saes, _) in setups.items():
        hook = next(iter(saes))
        edit = FeatureIntervention(hook, features=[0, 3], tokens=[1, 2], value=2.0)
        with splice_saes(model, saes, keep_error=False):
            spliced, cache = model.run_with_cache(images.to(device))
            edited = model.run_with_hooks(images.to(device),
                                          fwd_hooks=intervention_hooks([edit], model=model))
        logits[device] = (spliced, cache[f"{hook}.hook_sae_acts_post"], edited)
    for got, want in zip(logits["cuda"], logits["cpu"], strict=True):
        assert got.device.type == "cuda"
        assert rel_diff(got, want) <= GRAPH_RTOL


def test_faithfulness_on_cuda_with_cpu_images_equals_the_cpu_run(setups, images):
    config = FaithfulnessConfig(sweep=(0.0, 0.1, 0.5, 1.0), batch_size=2,
                                methods=("rrm", "random", "rrm_edge", "neuron"))
    reference = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    model_cpu = setups["cpu"][0]
    labels = model_cpu(reference).argmax(-1).detach()
    results = {d: evaluate_faithfulness(m, s, reference, labels, baselines=b, config=config,
                                        progress=False)  # images stay on the CPU
               for d, (m, s, b) in setups.items()}
    assert results["cuda"].image_indices == results["cpu"].image_indices
    for method, modes in results["cpu"].image_curves.items():
        for mode, quantities in modes.items():
            for q, curve in quantities.items():
                got = torch.as_tensor(results["cuda"].image_curves[method][mode][q])
                assert rel_diff(got, torch.as_tensor(curve)) <= CURVE_ATOL, (method, mode, q)


def test_edge_engine_syncs_do_not_grow_with_the_chunks_on_cuda(setups, images):
    """CUDA's own sync detector: its warnings must not grow with the number of chunks."""
    model, saes, baselines = setups["cuda"]
    counts = []
    for chunk in (2**24, 1):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for granularity in ("feature", "token"):
                    attribute(model, saes, images[:1].cuda(), baselines=baselines,
                              granularity=granularity, engine=EngineConfig(chunk_elements=chunk))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts
