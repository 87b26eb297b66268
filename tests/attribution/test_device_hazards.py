"""CUDA hazards checked without a GPU (issue 28): host-device syncs in the edge engine's inner
loops, tensors made on the CPU inside device code (the "meta" device stands in for CUDA: a
CPU tensor meeting a meta tensor fails as it would meeting a CUDA one), half precision refused,
faithfulness batches moved to the model's device and dtype."""

import copy

import pytest
import torch

from rrm_plugin.attribution.baselines import compute_baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import (
    EngineConfig,
    block_weights,
    feature_edges,
    pair_inputs,
)
from rrm_plugin.attribution.forward import attribution_forward
from rrm_plugin.attribution.token_engine import token_edges
from rrm_plugin.errors import RRMUserError
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.metrics.faithfulness import FaithfulnessConfig, evaluate_faithfulness
from rrm_plugin.metrics.faithfulness_methods import random_masks
from tests.attribution.conftest import random_saes
from tests.conftest import tiny_vit_config

# Each of these reads a device value on the host (a synchronisation on CUDA).
SYNCS = ("item", "tolist", "cpu", "numpy", "__index__", "__int__", "__float__", "__bool__")


@pytest.fixture
def count_syncs(monkeypatch):
    """Patch the host-reading Tensor methods (in this test only) to count their calls."""
    calls: list[str] = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


def _pair(vit, saes, images, baselines, granularity):
    forward = attribution_forward(vit, saes, images[:1], baselines=baselines, capture_blocks=True)
    src, tgt = forward.layers[0], forward.layers[1]
    x = pair_inputs(src, tgt, forward.blocks[tgt.block], saes[src.hook_name],
                    saes[tgt.hook_name], 0)
    present = [((t.acts[0] > 0) | (t.delta[0] != 0)) for t in (src, tgt)]
    if granularity == "feature":
        nodes = [torch.nonzero(p.any(0))[:, 0] for p in present]
    else:
        nodes = [torch.nonzero(p) for p in present]
    return block_weights(vit, tgt.block), x, nodes


@pytest.mark.parametrize("granularity", ["feature", "token"])
def test_edge_engine_host_reads_do_not_grow_with_the_number_of_chunks(
        granularity, vit, saes, images, baselines, count_syncs):
    w, x, (sources, targets) = _pair(vit, saes, images, baselines, granularity)
    compute = feature_edges if granularity == "feature" else token_edges
    counts, results = [], []
    for chunk in (2**24, 1):  # one chunk / one token (or target pair) per chunk
        count_syncs.clear()
        results.append(compute(w, x, sources=sources, targets=targets,
                               config=EngineConfig(chunk_elements=chunk)))
        counts.append(len(count_syncs))
    n_tokens = x.tgt_acts.shape[0]
    assert n_tokens >= 5  # so a per-chunk read would add at least 4 calls
    assert counts[0] == counts[1], f"host reads {counts} (calls: {count_syncs})"
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_block_weights_without_a_layernorm_gain_stay_on_the_models_device():
    model = build_hooked_vit(tiny_vit_config(normalization_type="LNPre"), seed=0).to("meta")
    w = block_weights(model, 1)
    assert w.ln1_w.device.type == "meta" and w.ln2_w.device.type == "meta"
    assert w.ln1_w.dtype == w.W_V.dtype


def test_random_masks_follow_the_counts_device():
    counts = [torch.tensor([1, 3]), torch.tensor([2, 0])]
    def generators():  # one per image, as faithfulness draws them
        return [torch.Generator().manual_seed(i) for i in range(2)]

    on_cpu = random_masks(counts, [5, 4], generators())
    on_meta = random_masks([c.to("meta") for c in counts], [5, 4], generators())
    assert [m.device.type for m in on_meta] == ["meta", "meta"]
    assert [m.shape for m in on_meta] == [m.shape for m in on_cpu]
    assert [m.sum(-1).tolist() for m in on_cpu] == [[1, 3], [2, 0]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("what", ["model", "saes"])
def test_half_precision_attribution_is_refused_before_any_work(
        dtype, what, vit, saes, images, baselines, monkeypatch):
    if what == "model":
        vit = copy.deepcopy(vit).to(dtype)
    else:
        saes = {h: copy.deepcopy(s).to(dtype) for h, s in saes.items()}
    forwards = []
    monkeypatch.setattr(type(vit), "forward", lambda *a, **k: forwards.append(1))
    with pytest.raises(RRMUserError, match="float32 or float64") as err:
        attribute(vit, saes, images.to(dtype), baselines=baselines)
    assert str(dtype).removeprefix("torch.") in str(err.value)
    with pytest.raises(RRMUserError, match="float32 or float64"):
        evaluate_faithfulness(vit, saes, images.to(dtype), torch.zeros(3, dtype=torch.long),
                              baselines=baselines, progress=False)
    assert forwards == []  # refused before the first forward pass


def test_faithfulness_moves_each_batch_to_the_models_dtype(reference_images):
    vit = build_hooked_vit(tiny_vit_config(dtype=torch.float64), seed=0).to(torch.float64).eval()
    saes = {h: s.to(torch.float64) for h, s in random_saes(vit).items()}
    images = reference_images[:6].double()
    baselines = compute_baselines(vit, saes, reference_images.double(), progress=False)
    labels = vit(images).argmax(-1).detach()
    config = FaithfulnessConfig(sweep=(0.0, 0.5, 1.0), batch_size=4, methods=("rrm", "random"))
    want = evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, config=config,
                                 progress=False)
    # float32 images of the same values (exactly representable: they came from float32).
    got = evaluate_faithfulness(vit, saes, images.float(), labels, baselines=baselines,
                                config=config, progress=False)
    assert got.image_indices == want.image_indices
    for method, modes in want.image_curves.items():
        for mode, quantities in modes.items():
            for q, curve in quantities.items():
                assert (got.image_curves[method][mode][q] == curve).all(), (method, mode, q)
