"""Data shipped with the package: coloured, translated scikit-learn digits (and `digits-spurious`,
the same canvas with a class-coloured corner marker). The test set of a named model is
`rrm_plugin.zoo.datasets.load_test_set`."""

from rrm_plugin.data.digits import DigitsBatch, DigitsCanvasConfig, held_out_set, train_sampler

__all__ = ["DigitsBatch", "DigitsCanvasConfig", "held_out_set", "train_sampler"]
