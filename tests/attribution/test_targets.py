"""Target classes must be integers: 3.5 is not silently class 3, "3" not a torch error."""

import pytest
import torch

from rrm_plugin.attribution.graph import attribute
from rrm_plugin.attribution.targets import resolve_classes

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
