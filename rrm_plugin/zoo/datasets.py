"""The test set and training stream of an embedded model, looked up by the model's name."""

from __future__ import annotations

from rrm_plugin.data.digits import DigitsBatch, held_out_set, train_sampler
from rrm_plugin.data.spurious import BENCHMARKS, spurious_test_set, spurious_train_sampler
from rrm_plugin.errors import UnknownNameError
from rrm_plugin.zoo.models import MODELS, ModelSpec


def _spec(model_name: str) -> ModelSpec:
    if model_name not in MODELS:
        raise UnknownNameError(f"unknown model {model_name!r}; available models: {sorted(MODELS)}")
    return MODELS[model_name]


def load_test_set(model_name: str = "digits-vit") -> DigitsBatch:
    """Held-out images, labels and object masks for an embedded model (for the `digits-spurious`
    models: the benchmark's test split, with `markers` and `groups` too)."""
    spec = _spec(model_name)
    if spec.benchmark in BENCHMARKS:
        return spurious_test_set(BENCHMARKS[spec.benchmark])
    return held_out_set(spec.data)


def training_sampler(model_name: str, *, seed: int):
    """Seeded stream of training-distribution batches of an embedded model (`sample(n)`)."""
    spec = _spec(model_name)
    if spec.benchmark in BENCHMARKS:
        return spurious_train_sampler(BENCHMARKS[spec.benchmark], seed=seed)
    return train_sampler(spec.data, seed=seed)
