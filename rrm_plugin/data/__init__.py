"""Data shipped with the package: coloured, translated scikit-learn digits (and `digits-spurious`,
the same canvas with a class-coloured corner marker)."""

from rrm_plugin.data.digits import DigitsBatch, DigitsCanvasConfig, held_out_set, train_sampler


def _spec(model_name: str):
    from rrm_plugin.zoo.models import MODELS

    if model_name not in MODELS:
        raise KeyError(f"unknown model {model_name!r}; available models: {sorted(MODELS)}")
    return MODELS[model_name]


def load_test_set(model_name: str = "digits-vit") -> DigitsBatch:
    """Held-out images, labels and object masks for an embedded model (for the `digits-spurious`
    models: the benchmark's test split, with `markers` and `groups` too)."""
    spec = _spec(model_name)
    if spec.benchmark == "digits-spurious":
        from rrm_plugin.data.spurious import spurious_test_set

        return spurious_test_set()
    return held_out_set(spec.data)


def training_sampler(model_name: str, *, seed: int):
    """Seeded stream of training-distribution batches of an embedded model (`sample(n)`)."""
    spec = _spec(model_name)
    if spec.benchmark == "digits-spurious":
        from rrm_plugin.data.spurious import spurious_train_sampler

        return spurious_train_sampler(seed=seed)
    return train_sampler(spec.data, seed=seed)


__all__ = ["DigitsBatch", "DigitsCanvasConfig", "load_test_set", "held_out_set", "train_sampler",
           "training_sampler"]
