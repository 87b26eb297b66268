"""Which images a faithfulness run uses: the correctly classified ones, a seeded subset of them,
or the given indices, each checked against the correct ones."""

import pytest
import torch

from rrm_plugin.errors import RRMUserError
from rrm_plugin.metrics.image_selection import chosen_images, correct_indices, select_images


def test_correct_indices_in_any_batch_size_without_a_progress_bar(vit, reference_images, capsys):
    images = reference_images[:5]
    labels = vit(images).argmax(-1).detach()
    labels[1] = (labels[1] + 1) % vit.cfg.n_classes  # images 1 and 3 are now misclassified
    labels[3] = (labels[3] + 2) % vit.cfg.n_classes
    capsys.readouterr()
    for batch_size in (256, 2, 1):  # batches gathered in order
        got = correct_indices(vit, images, labels, batch_size=batch_size)
        assert got.tolist() == [0, 2, 4] and got.dtype == torch.long
    assert capsys.readouterr().err == ""  # the correctness pass shows no bar


def test_select_images_all_a_seeded_subset_and_messages():
    correct = torch.arange(10) * 3
    assert torch.equal(select_images(correct, None, 42), correct)
    assert torch.equal(select_images(correct, 10, 0), correct)  # all of them is allowed
    subset = select_images(correct, 4, 42)
    assert torch.equal(subset, select_images(correct, 4, 42)) and len(subset) == 4
    assert set(subset.tolist()) <= set(correct.tolist()) and subset.tolist() == sorted(subset)
    assert any(not torch.equal(subset, select_images(correct, 4, s)) for s in range(5))
    one = select_images(correct, 1, 0)
    assert len(one) == 1 and int(one) in correct.tolist()
    with pytest.raises(RRMUserError, match=r"^asked for 11 images but only 10 held-out images "
                                           r"are classified correctly$"):
        select_images(correct, 11, 0)
    with pytest.raises(RRMUserError, match="^n_images must be at least 1, got 0$"):
        select_images(correct, 0, 0)


def test_chosen_images_must_be_correct_and_in_range():
    correct = torch.tensor([0, 2, 3, 7])
    got = chosen_images(correct, (2, 7))
    assert got.tolist() == [2, 7] and got.dtype == torch.long
    with pytest.raises(RRMUserError, match=r"^image_indices \[1, 9\] are not correctly "
                                           r"classified images of the set \(or out of range\); "
                                           r"faithfulness uses correct images only$"):
        chosen_images(correct, (0, 9, 1))
