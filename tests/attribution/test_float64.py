"""Attribution in float64 (`--dtype float64`): the engine's buffers follow the model's dtype."""

import pytest
import torch

from rrm_plugin.attribution.baselines import compute_baselines
from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.engine import EngineConfig
from rrm_plugin.zoo.models import to_device
from tests.attribution.conftest import random_saes, sharp_vit


@pytest.mark.parametrize("granularity, top_k", [("feature", None), ("token", None), ("token", 3)])
def test_float64_graphs_equal_the_float32_graphs(granularity, top_k, reference_images, images):
    graphs = {}
    for dtype in ("float32", "float64"):
        model = to_device(sharp_vit(), dtype=dtype)
        saes = {h: s.to(next(model.parameters()).dtype) for h, s in random_saes(model).items()}
        x = images.to(next(model.parameters()).dtype)
        baselines = compute_baselines(model, saes, reference_images.to(x.dtype), progress=False)
        graphs[dtype] = attribute(model, saes, x[:2], baselines=baselines,
                                  granularity=granularity, engine=EngineConfig(token_top_k=top_k))
    for g32, g64 in zip(graphs["float32"], graphs["float64"], strict=True):
        assert g64.edges and all(e.dtype == torch.float64 for e in g64.edges)
        for e32, e64 in zip(g32.edges, g64.edges, strict=True):
            a, b = (e.to_dense() if e.is_sparse else e for e in (e32, e64))
            # float32 rounding of the sharp model's forward pass (weights scaled by 12).
            torch.testing.assert_close(a.double(), b, atol=2e-3, rtol=2e-3)
