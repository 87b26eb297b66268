import math

import numpy as np
import pytest
import scipy.stats
import torch

from rrm_plugin.lens.metrics import (
    block_identifiability,
    change_rate,
    check_object_mask,
    class_rank,
    context_vs_object,
    identifiability_score,
    permutation_test,
    residual_composition,
    sublayer_change_rates,
)
from rrm_plugin.lens.projection import ClassProjection


def test_rank_counts_strictly_larger_classes():
    logits = torch.tensor([[[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]]])  # [batch=1, pos=2, C=3]
    assert class_rank(logits, labels=torch.tensor([2])).tolist() == [[1, 2]]
    assert class_rank(logits, labels=torch.tensor([0])).tolist() == [[0, 0]]  # tie -> top


def test_identifiability_score_bounds():
    scores = identifiability_score(torch.tensor([0, 4, 9]), n_classes=10)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.6, 0.1]))


def _logits_with_top(top: torch.Tensor, n_classes: int = 3) -> torch.Tensor:
    """Logits whose arg-max is `top` (any shape), one-hot scaled."""
    return torch.nn.functional.one_hot(top, n_classes).float()


def test_block_identifiability_by_hand():
    # 2 blocks, 2 images, CLS + 3 patches; the argmax class of every token is given.
    top = torch.tensor([
        [[0, 0, 1, 2], [2, 1, 1, 1]],  # block 0
        [[1, 0, 0, 0], [1, 1, 0, 1]],  # block 1
    ])
    labels = torch.tensor([0, 1])
    result = block_identifiability(_logits_with_top(top), labels=labels, n_prefix=1)
    # Block 0: image 0 patches hit 1/3, image 1 patches hit 3/3 -> 4/6 tokens; both images hit.
    torch.testing.assert_close(result.identifiability_rate, torch.tensor([400 / 6, 500 / 6]))
    torch.testing.assert_close(result.images_with_identifiable_token, torch.tensor([100.0, 100.0]))
    torch.testing.assert_close(result.cls_identifiable, torch.tensor([50.0, 50.0]))
    # Scores: rank 0 -> 1, rank 1 (tie of two zeros below one) -> 1 - 1/3.
    s1 = 1 - 1 / 3
    torch.testing.assert_close(result.cls_score, torch.tensor([(1 + s1) / 2, (s1 + 1) / 2]))
    torch.testing.assert_close(result.image_score[0], torch.tensor((1 + 2 * s1 + 3) / 6))


def test_images_with_identifiable_token_counts_images_not_tokens():
    top = torch.tensor([[[0, 1, 1], [0, 0, 0], [0, 0, 1]]])  # 1 block, 3 images, CLS + 2
    result = block_identifiability(_logits_with_top(top), labels=torch.tensor([0, 1, 1]),
                                   n_prefix=1)
    # Image 0: no patch says 0; image 1: no patch says 1; image 2: one patch says 1.
    torch.testing.assert_close(result.images_with_identifiable_token, torch.tensor([100 / 3]))


def test_without_cls_all_tokens_are_image_tokens():
    top = torch.tensor([[[0, 1]]])
    result = block_identifiability(_logits_with_top(top), labels=torch.tensor([0]), n_prefix=0)
    assert result.identifiability_rate.item() == 50.0
    assert math.isnan(result.cls_score.item())


def test_change_rate_by_hand():
    before = torch.zeros(1, 1, 4, 2)
    after = torch.tensor([[[[0.0, 0], [1, 0], [-1, 0], [2, 0]]]])
    # True class 0: CLS excluded; patches rise, fall, rise -> 2/3.
    rate = change_rate(before, after, labels=torch.tensor([0]), n_prefix=1)
    torch.testing.assert_close(rate, torch.tensor([200 / 3]))


def test_sublayer_change_and_composition_by_hand():
    z = torch.zeros(1, 2, 2)  # [batch=1, pos=2, C=2]
    proj = ClassProjection(
        embed=torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]),
        resid=torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]]),  # block 0: both tokens say class 0
        attn=torch.tensor([[[[2.0, 0.0], [0.0, 1.0]]]]),
        mlp=(z - 1)[None],
    )
    change = sublayer_change_rates(proj, labels=torch.tensor([0]), n_prefix=1)
    assert change.attn_cls.item() == 100.0  # 2 > 1
    assert change.attn_image.item() == 0.0  # 0 > 0 is false
    assert change.mlp_image.item() == 0.0
    comp = residual_composition(proj)
    # top after block 0 = [0, 0]; previous = [0, 1]; attn = [0, 1]; mlp ties -> argmax 0.
    assert comp.previous.item() == 50.0 and comp.attn.item() == 50.0
    assert comp.mlp.item() == 100.0 and comp.composition.item() == 0.0


def test_permutation_test_known_answers():
    # Constant values: every permutation ties the observed difference, p = 1.
    flat = permutation_test(torch.ones(20), in_group=torch.arange(20) < 5, n_permutations=50)
    assert flat.difference == 0.0 and flat.p_value == 1.0 and flat.p_value_lower == 1.0
    # 2 largest of 6 values form the group: only 1 of C(6,2) = 15 splits is as extreme.
    values = torch.tensor([5.0, 4.0, 1.0, 0.5, 0.2, 0.0])
    test = permutation_test(values, in_group=torch.arange(6) < 2, n_permutations=6000, seed=3)
    assert test.difference == pytest.approx(4.5 - 1.7 / 4)
    assert test.p_value == pytest.approx(1 / 15, abs=0.012)
    # A large, clean separation: no permutation reaches it.
    big = torch.cat([torch.full((50,), 2.0), torch.zeros(200)])
    sep = permutation_test(big, in_group=torch.arange(250) < 50, n_permutations=99)
    assert sep.p_value == pytest.approx(1 / 100) and sep.p_value_lower == 1.0
    # Reversed (group lower than the rest): the paper's tail says nothing, the other one does.
    low = permutation_test(big, in_group=torch.arange(250) >= 200, n_permutations=99)
    assert low.p_value == 1.0 and low.p_value_lower == pytest.approx(1 / 100)


def test_permutation_test_is_scipys_on_a_seeded_case():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(40, generator=gen) + 0.4 * (torch.arange(40) < 12)
    in_group = torch.arange(40) < 12
    ours = permutation_test(values, in_group=in_group, n_permutations=499, seed=7, chunk=50)
    x, y = values[:12].double().numpy(), values[12:].double().numpy()

    def scipy_p(alternative):
        return scipy.stats.permutation_test(
            (x, y), lambda a, b, axis: a.mean(axis) - b.mean(axis), vectorized=True,
            permutation_type="independent", n_resamples=499, alternative=alternative,
            random_state=np.random.default_rng(7),
        )

    upper, lower = scipy_p("greater"), scipy_p("less")
    assert ours.difference == pytest.approx(x.mean() - y.mean(), rel=1e-12)
    assert ours.p_value == pytest.approx(upper.pvalue, rel=1e-12)
    assert ours.p_value_lower == pytest.approx(lower.pvalue, rel=1e-12)
    assert ours.p_value * 500 == pytest.approx(round(ours.p_value * 500))  # (1 + count) / 500
    assert 0 < ours.p_value < 1 and ours.p_value + ours.p_value_lower >= 1


def test_permutation_test_rejects_empty_groups():
    with pytest.raises(ValueError, match="both groups need members"):
        permutation_test(torch.ones(4), in_group=torch.ones(4, dtype=torch.bool))


def test_context_vs_object_per_block_and_mask_checks():
    scores = torch.zeros(2, 4, 3)
    scores[1, :, 0] = 1.0  # block 1: patch 0 (the object) is fully identifiable
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[:, 0] = True
    tests = context_vs_object(scores, object_mask=mask, n_permutations=200)
    assert tests[0].p_value == 1.0 and tests[0].difference == 0.0
    assert tests[1].difference == 1.0 and tests[1].p_value < 0.01
    assert [t.n_permutations for t in tests] == [200, 200]
    assert context_vs_object(scores, object_mask=mask)[0].n_permutations == 1000  # the default
    with pytest.raises(ValueError, match=r"object_mask has shape \[4, 2\], expected \[4, 3\]"):
        context_vs_object(scores, object_mask=mask[:, :2])
    with pytest.raises(TypeError, match="torch.bool"):
        context_vs_object(scores, object_mask=mask.float())


def test_object_mask_of_the_wrong_type_is_named():
    with pytest.raises(TypeError) as err:
        check_object_mask([[True]], n_images=1, n_patches=1)
    assert str(err.value) == "object_mask must be a bool tensor [1, 1], got list"


def test_permutation_test_needs_one_group_flag_per_value():
    with pytest.raises(ValueError) as err:
        permutation_test(torch.ones(4), in_group=torch.ones(3, dtype=torch.bool))
    assert str(err.value) == "values (4) and in_group (3) must have the same number of elements"


def test_composition_counts_each_sublayer_separately():
    # Top class after the block: [0, 1]. Previous residual: [0, 0]; attention: [0, 1]; MLP: [1, 0].
    proj = ClassProjection(
        embed=torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]),
        resid=torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]),
        attn=torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]),
        mlp=torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]]),
    )
    comp = residual_composition(proj)
    assert [comp.previous.item(), comp.attn.item(), comp.mlp.item(), comp.composition.item()] == [
        50.0, 100.0, 0.0, 0.0]


def test_sublayer_class_change_is_the_output_minus_the_entering_residual():
    from rrm_plugin.lens.metrics import sublayer_class_change

    proj = ClassProjection(
        embed=torch.tensor([[[1.0, 3.0], [0.5, 2.0]]]),  # [batch=1, pos=2, C=2]
        resid=torch.tensor([[[[4.0, 0.0], [1.0, 7.0]]], [[[0.0, 0.0], [0.0, 0.0]]]]),
        attn=torch.tensor([[[[2.0, 5.0], [0.0, 1.0]]], [[[9.0, 6.0], [3.0, 8.0]]]]),
        mlp=torch.zeros(2, 1, 2, 2),
    )
    change = sublayer_class_change(proj, labels=torch.tensor([1]), kind="attn")
    # Block 0: attn class-1 logits (5, 1) minus the embeddings' (3, 2); block 1: (6, 8) minus
    # block 0's residual (0, 7).
    assert change.tolist() == [[[2.0, -1.0]], [[6.0, 1.0]]]


def test_context_vs_object_draws_block_i_with_seed_plus_i():
    rng = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 5, 6, generator=rng)
    mask = torch.rand(5, 6, generator=rng) > 0.5
    tests = context_vs_object(scores, object_mask=mask, n_permutations=50, seed=7)
    for i, got in enumerate(tests):
        want = permutation_test(scores[i].flatten(), in_group=mask.flatten(), n_permutations=50,
                                seed=7 + i)
        assert got == want
    assert len({t.p_value for t in tests}) > 1
