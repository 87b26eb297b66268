import pytest
import torch
from sklearn.linear_model import Ridge

from rrm_plugin.lens.probes import (
    _add,
    _moments,
    _solve,
    _targets,
    compare_with_probes,
    fit_ridge_probes,
    probe_importance,
    probe_logits,
)


def test_ridge_probes_match_sklearn():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 5, generator=gen) * torch.tensor([1.0, 3.0, 0.3, 2.0, 1.0]) + 2.0
    labels = torch.randint(0, 4, (40,), generator=gen)
    probes = fit_ridge_probes(x, labels=labels, n_classes=4, alpha=1.0)
    targets = (2 * torch.nn.functional.one_hot(labels, 4) - 1).numpy()
    for p in range(3):
        ref = Ridge(alpha=1.0).fit(x[p].double().numpy(), targets)
        coef, intercept = (torch.tensor(a, dtype=torch.float32) for a in (ref.coef_.T,
                                                                          ref.intercept_))
        torch.testing.assert_close(probes.weight[p], coef, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(probes.bias[p], intercept, atol=1e-5, rtol=1e-4)
        pred = probe_logits(probes, x)[p]
        torch.testing.assert_close(pred, torch.tensor(ref.predict(x[p].double().numpy()),
                                                      dtype=torch.float32), atol=1e-4, rtol=1e-4)


def test_streamed_moments_give_the_same_probes():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 4, generator=gen)
    labels = torch.randint(0, 3, (30,), generator=gen)
    y = _targets(labels, 3)
    streamed = _solve(_add(_moments(x[:, :13], y[:13]), _moments(x[:, 13:], y[13:])), alpha=0.5)
    whole = fit_ridge_probes(x, labels=labels, n_classes=3, alpha=0.5)
    torch.testing.assert_close(streamed.weight, whole.weight)
    torch.testing.assert_close(streamed.bias, whole.bias)


def test_separable_features_are_probed_perfectly():
    labels = torch.arange(6) % 3
    x = torch.nn.functional.one_hot(labels, 3).float()[None] * 10
    probes = fit_ridge_probes(x, labels=labels, n_classes=3, alpha=1e-3)
    assert probe_logits(probes, x).argmax(-1)[0].tolist() == labels.tolist()


def test_probe_importance_by_hand():
    rank = torch.tensor([[[0, 2, 0, 1]], [[5, 1, 0, 3]]])  # [layer, batch=1, CLS + 3 patches]
    assert probe_importance(rank, n_prefix=1).tolist() == [[-3.0, -0.0, -4.0]]


def test_compare_with_probes_shapes_and_consistency(tiny_vit, tiny_images):
    gen = torch.Generator().manual_seed(5)
    train = torch.rand(12, 3, 8, 8, generator=gen)
    train_labels = torch.randint(0, 5, (12,), generator=gen)
    labels = torch.tensor([0, 1, 2, 3])
    result = compare_with_probes(tiny_vit, train_images=train, train_labels=train_labels,
                                 test_images=tiny_images, test_labels=labels, batch_size=5,
                                 progress=False)
    n_layers, n_tokens = tiny_vit.cfg.n_layers, 5
    assert result.probe_accuracy.shape == (3, n_layers, n_tokens)
    assert result.resid_rank.shape == (n_layers, 4, n_tokens)
    # The projection read at the last block's CLS token is the model's own prediction.
    with torch.no_grad():
        model_acc = 100 * (tiny_vit(tiny_images).argmax(-1) == labels).float().mean()
    torch.testing.assert_close(result.projection_accuracy[0, -1, 0], model_acc)
    with pytest.raises(ValueError, match="out of range"):
        compare_with_probes(tiny_vit, train_images=train, train_labels=train_labels + 10,
                            test_images=tiny_images, test_labels=labels, progress=False)


def test_default_penalty_is_sklearns_ridge_default():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 25, 4, generator=gen)
    labels = torch.randint(0, 3, (25,), generator=gen)
    targets = (2 * torch.nn.functional.one_hot(labels, 3) - 1).numpy()
    ref = Ridge().fit(x[0].double().numpy(), targets)
    probes = fit_ridge_probes(x, labels=labels, n_classes=3)
    torch.testing.assert_close(probes.weight[0], torch.tensor(ref.coef_.T, dtype=torch.float32),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(8, 4), (2, 7, 4)])
def test_fit_rejects_features_of_the_wrong_shape(shape):
    with pytest.raises(ValueError) as err:
        fit_ridge_probes(torch.zeros(shape), labels=torch.zeros(8, dtype=torch.long), n_classes=2)
    assert str(err.value) == f"features must be [probe, n=8, d], got {list(shape)}"
