"""Fixtures of the viewer tests: a hand-built graph and real graphs of tiny and digits ViTs."""

import pytest
import torch

from rrm_plugin.attribution.graph import Graph, GraphLayer
from tests.attribution.conftest import (  # noqa: F401  (fixtures shared with attribution tests)
    baselines,
    images,
    reference_images,
    saes,
    vit,
)


def hand_graph() -> Graph:
    """Two SAE layers with known edges: L0 features 3, 7 (+ error); L1 features 1, 4, 5."""
    edges0 = torch.tensor([[1.0, 0.0, -2.0],    # L0/F3 -> L1/F1, L1/F5
                           [0.0, 3.0, 0.0],     # L0/F7 -> L1/F4
                           [0.5, 0.0, 0.0]])    # L0 error -> L1/F1
    layer0 = GraphLayer("blocks.0.hook_resid_post", 0, 8, torch.tensor([3, 7]), None,
                        torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]),
                        torch.tensor([-1.0, 3.0]), 0.5)
    layer1 = GraphLayer("blocks.1.hook_resid_post", 1, 8, torch.tensor([1, 4, 5]), None,
                        torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]),
                        torch.tensor([2.5, -1.0, 0.0]), 0.25)
    return Graph([layer0, layer1], [edges0], target_class=1, metric="adjusted_logit",
                 value=1.75, logits=torch.tensor([0.0, 2.125, -1.0]),  # 2.125 - mean = 1.75
                 granularity="feature", n_tokens=5)


@pytest.fixture
def graph(vit, saes, images, baselines):  # noqa: F811
    from rrm_plugin.attribution.build import attribute

    return attribute(vit, saes, images[:1], baselines=baselines)[0]


@pytest.fixture
def token_graph(vit, saes, images, baselines):  # noqa: F811
    from rrm_plugin.attribution.build import attribute

    return attribute(vit, saes, images[:1], baselines=baselines, granularity="token")[0]


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The viewer of a held-out digit (the embedded model), as `rrm trace` builds it."""
    import rrm_plugin
    from rrm_plugin.attribution import attribute
    from rrm_plugin.viewer.build import build_viewer, write_viewer
    from rrm_plugin.zoo.baselines import load_release_baselines

    model = rrm_plugin.load_model("digits-vit")
    release = rrm_plugin.load_saes("rrm-digits-vit")
    medians = load_release_baselines("rrm-digits-vit", release)
    image = rrm_plugin.load_test_set("digits-vit").images[5]
    graph = attribute(model, release, image[None], baselines=medians)[0]
    payload = build_viewer(graph, model=model, saes=release, image=image, baselines=medians,
                           title="digits-vit: held-out image 5")
    out = tmp_path_factory.mktemp("viewer")
    return graph, payload, write_viewer(out, payload)
