"""Shared tiny fixtures: everything offline, small enough for a 2-core CI."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from vit_prisma.configs.HookedViTConfig import HookedViTConfig  # noqa: E402

from rrm_plugin.hosts.prisma import build_hooked_vit  # noqa: E402
from rrm_plugin.saes.training import new_topk_sae  # noqa: E402
from tests.hubcache import datacomp_b32_hub, offline_hub, vit_b16_hub  # noqa: E402, F401

torch.set_num_threads(1)  # tiny models: threads only add overhead


def pytest_collection_modifyitems(items):
    """The `slow` end-to-end tests first (otherwise in collection order): on pytest-xdist workers
    the suite then ends on short tests, not on one worker finishing a minutes-long run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _seeded_global_generators():
    """Every test starts from the same global torch / numpy / random state, so a test that
    draws without its own generator still sees the same numbers on every run and in any order."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures the code under test saves, in order (`Figure.savefig` records the figure, then
    saves as usual); for figures drawn inside a report writer, which returns only paths."""
    from matplotlib.figure import Figure

    save = Figure.savefig
    kept = []

    def record(fig, *args, **kwargs):
        kept.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return kept


def tiny_vit_config(**overrides) -> HookedViTConfig:
    base = dict(
        n_layers=3, d_model=16, d_head=4, n_heads=4, d_mlp=32, activation_name="gelu", eps=1e-5,
        patch_size=4, image_size=8, n_channels=3, n_classes=5, return_type="class_logits",
        use_wandb=False,
    )
    base.update(overrides)
    return HookedViTConfig(**base)


@pytest.fixture
def tiny_vit():
    return build_hooked_vit(tiny_vit_config(), seed=0).eval()


@pytest.fixture
def tiny_saes(tiny_vit):
    d = tiny_vit.cfg.d_model
    return {
        f"blocks.{layer}.hook_resid_post": new_topk_sae(
            d_in=d, d_sae=32, k=4, hook_name=f"blocks.{layer}.hook_resid_post",
            model_name="tiny", seed=layer,
        )
        for layer in range(tiny_vit.cfg.n_layers - 1)
    }


@pytest.fixture
def tiny_images():
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def sample_photos(preprocessing) -> torch.Tensor:
    """scikit-learn's two sample photos (china.jpg, flower.jpg), preprocessed for a model."""
    from sklearn.datasets import load_sample_images

    from rrm_plugin.data.images import preprocess

    arrays = load_sample_images().images
    raw = [torch.tensor(im).permute(2, 0, 1) for im in arrays]  # 8-bit, as read_image gives
    return torch.stack([preprocess(im, preprocessing) for im in raw])
