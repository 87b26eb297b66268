"""Data shipped with the package: coloured, translated scikit-learn digits."""

from rrm_plugin.data.digits import DigitsBatch, DigitsCanvasConfig, held_out_set, train_sampler


def load_test_set(model_name: str = "digits-vit") -> DigitsBatch:
    """Held-out images, labels and object masks for an embedded model."""
    from rrm_plugin.zoo.models import MODELS

    if model_name not in MODELS:
        raise KeyError(f"unknown model {model_name!r}; available models: {sorted(MODELS)}")
    return held_out_set(MODELS[model_name].data)


__all__ = ["DigitsBatch", "DigitsCanvasConfig", "load_test_set", "held_out_set", "train_sampler"]
