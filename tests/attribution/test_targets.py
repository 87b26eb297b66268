"""Target classes must be integers: 3.5 is not silently class 3, "3" not a torch error."""

import pytest
import torch

from rrm_plugin.attribution.build import attribute
from rrm_plugin.attribution.targets import integer_tensor, metric_values, resolve_classes

LOGITS = torch.zeros(2, 5)


@pytest.mark.parametrize("classes", [3.5, "3", [1, 2.0], True, torch.tensor([1.0, 2.0]),
                                     torch.tensor([True, False])])
def test_non_integer_classes_are_refused(classes):
    with pytest.raises(TypeError, match="classes must be integers"):
        resolve_classes(LOGITS, classes)


def test_integer_classes_of_every_kind_resolve():
    import numpy as np

    assert resolve_classes(LOGITS, 3).tolist() == [3, 3]
    assert resolve_classes(LOGITS, [1, 4]).tolist() == [1, 4]
    assert resolve_classes(LOGITS, np.int64(2)).tolist() == [2, 2]
    assert resolve_classes(LOGITS, torch.tensor([0, 2], dtype=torch.int32)).tolist() == [0, 2]


def test_attribute_without_baselines_says_what_is_missing(vit, saes, images):
    with pytest.raises(TypeError, match=r"attribute needs baselines=, got None: e.g. "
                                        r"load_release_baselines"):
        attribute(vit, saes, images[:1], baselines=None)
    with pytest.raises(TypeError, match="classes must be integers"):
        from rrm_plugin.attribution.baselines import Baselines

        zero = Baselines.zeros(saes, n_tokens=5)
        attribute(vit, saes, images[:1], baselines=zero, classes=3.5)


def test_metric_values_by_hand():
    logits = torch.tensor([[1.0, 4.0, 1.0], [0.0, -3.0, 6.0]])
    classes = torch.tensor([1, 0])
    assert metric_values(logits, classes, "logit").tolist() == [4.0, 0.0]
    assert metric_values(logits, classes, "adjusted_logit").tolist() == [2.0, -1.0]  # - mean
    with pytest.raises(ValueError, match=r"^unknown target metric 'prob'; expected one of "
                                         r"\['logit', 'adjusted_logit'\]$"):
        metric_values(logits, classes, "prob")


def test_resolve_classes_by_hand():
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 1.0]])
    assert resolve_classes(logits, None).tolist() == [1, 0]  # predicted, per image
    assert resolve_classes(logits, [2]).tolist() == [2, 2]  # one class for every image
    assert resolve_classes(logits, torch.tensor([[0], [2]])).tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"^got 3 target classes for 2 images$"):
        resolve_classes(logits, [0, 1, 2])
    for bad, first in (([0, 3], 3), ([-1, 3], -1), ([2, -2], -2)):
        with pytest.raises(ValueError, match=rf"^unknown target class {first}; the model has "
                                             r"classes 0\.\.2$"):
            resolve_classes(logits, bad)


def test_integer_tensor_names_the_first_bad_value():
    assert integer_tensor(range(3), what="x").tolist() == [0, 1, 2]
    assert integer_tensor((4,), what="x").dtype == torch.long
    with pytest.raises(TypeError, match=r"^labels must be integers \(class indices\), got 2\.5 "
                                        r"\(float\)$"):
        integer_tensor([1, 2.5, "a"], what="labels")
    with pytest.raises(TypeError, match=r"^labels must be integers \(class indices\), got a "
                                        r"torch\.complex64 tensor$"):
        integer_tensor(torch.zeros(2, dtype=torch.complex64), what="labels")
