"""How a faithfulness run passes its settings on: the config's normalisation, tie rule, metric,
generators, image subset and progress bars reach every method; neuron circuits are applied in
both modes; the small summary helpers' edge cases."""

import re

import numpy as np
import pytest
import torch

from rrm_plugin.attribution.forward import attribution_forward
from rrm_plugin.circuits.pruning import edge_rule, select
from rrm_plugin.errors import RRMUserError
from rrm_plugin.metrics.faithfulness import (
    METHODS,
    RANDOM_METHODS,
    FaithfulnessConfig,
    Layout,
    batch_generators,
    evaluate_faithfulness,
    image_generators,
    image_seed,
    method_masks,
    method_scores,
    sae_layout,
)
from rrm_plugin.metrics.faithfulness_methods import _dense_rrm_scores, neuron_scores, random_masks
from rrm_plugin.metrics.faithfulness_result import image_aucs
from rrm_plugin.metrics.image_selection import select_images
from tests.metrics.oracles import adjusted, trapezoid_auc

SWEEP = (0.0, 0.5, 1.0)


def fresh_generators(seed=7, batch=4):
    """Tie-order generators per method; the random methods draw from one generator per image."""
    gens = {m: torch.Generator().manual_seed(seed + i) for i, m in enumerate(METHODS)}
    return {**gens, **{m: [torch.Generator().manual_seed(seed + 100 * (i + 1) + j)
                           for j in range(batch)] for i, m in enumerate(RANDOM_METHODS)}}


def tied_scores(sizes, seed):
    """Integer scores in [-3, 3]: many ties, negative entries (clamp and abs differ)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-3, 4, (4, n), generator=g).float() for n in sizes]


def test_method_masks_use_the_configs_normalisation_ties_and_each_methods_generator():
    layout = Layout(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], [9, 17], 6, 0,
                    torch.device("cpu"))
    scores = {"rrm": tied_scores([9, 17], 0), "non_linearised": tied_scores([9, 17], 1),
              "neuron": tied_scores([6, 6], 2)}
    config = FaithfulnessConfig(methods=("rrm", "non_linearised", "neuron", "random",
                                         "random_authors"),
                                normalisation="abs", ties="random", criterion="topk")
    torch.manual_seed(123)  # the global generator must not be what draws
    got = method_masks(scores, value=0.5, config=config, layout=layout, batch=4,
                       generators=fresh_generators())
    torch.manual_seed(456)
    again = method_masks(scores, value=0.5, config=config, layout=layout, batch=4,
                         generators=fresh_generators())
    for m in config.methods:
        assert all(torch.equal(a, b) for a, b in zip(got[m], again[m], strict=True)), m
    gens = fresh_generators()
    for m in ("rrm", "non_linearised", "neuron"):
        want = select(scores[m], criterion="topk", value=0.5, mode="abs", ties="random",
                      generator=gens[m])
        assert all(torch.equal(a, b) for a, b in zip(got[m], want, strict=True)), m
    # "abs" and "clamp" rank these scores differently, as do "random" and "raw" ties.
    for other in (dict(mode="clamp", ties="random"), dict(mode="abs", ties="raw")):
        want = select(scores["rrm"], criterion="topk", value=0.5, generator=fresh_generators()[
            "rrm"], **other)
        assert any(not torch.equal(a, b) for a, b in zip(got["rrm"], want, strict=True)), other


@pytest.mark.parametrize("normalisation,ties", [("clamp", "raw"), ("abs", "random")])
def test_rrm_edge_masks_are_the_dense_edge_rule_with_the_configs_settings(
        vit, saes, images, baselines, normalisation, ties):
    layout = sae_layout(saes)
    y = vit(images).argmax(-1)
    config = FaithfulnessConfig(methods=("rrm_edge",), normalisation=normalisation, ties=ties)
    scores = method_scores(vit, saes, images, y, baselines=baselines, config=config,
                           layout=layout)
    torch.manual_seed(0)
    got = method_masks(scores, value=0.5, config=config, layout=layout, batch=len(images),
                       generators=fresh_generators())["rrm_edge"]
    assert [m.shape for m in got] == [(len(images), size) for size in layout.sizes]
    gen = fresh_generators()["rrm_edge"]  # one generator, graph after graph
    for b, graph in enumerate(scores["graphs"]):
        want = edge_rule(graph, p=0.5, mode=normalisation, dense=True, ties=ties, generator=gen)
        assert all(torch.equal(g[b], w) for g, w in zip(got, want, strict=True))
    # The other normalisation selects differently on the first graph (so the setting shows).
    other = edge_rule(scores["graphs"][0], p=0.5, dense=True, ties=ties,
                      mode="clamp" if normalisation == "abs" else "abs",
                      generator=fresh_generators()["rrm_edge"])
    assert any(not torch.equal(g[0], w) for g, w in zip(got, other, strict=True))


def test_random_masks_are_drawn_per_image():
    gens = [torch.Generator().manual_seed(i) for i in range(50)]
    masks = random_masks([torch.full((50,), 5)], [30], gens)[0]
    assert masks.shape == (50, 30) and (masks.sum(-1) == 5).all()
    assert len({tuple(row.tolist()) for row in masks}) > 40  # not one draw for every image


def test_batch_generators_are_seeded_by_the_seed_the_method_and_the_batch():
    config = FaithfulnessConfig(seed=5)
    offsets = {"random": 0, "random_authors": 1, "rrm": 2, "rrm_edge": 3, "non_linearised": 4,
               "neuron": 5}
    for batch_index in (0, 3):
        gens = batch_generators(config, batch_index)
        assert set(gens) == set(METHODS)
        for m, offset in offsets.items():
            assert gens[m].initial_seed() == 5 + offset + 64 * batch_index


def test_an_images_records_do_not_depend_on_its_batch_or_the_subset_run(
        vit, saes, reference_images, baselines):
    """Random circuits are seeded per image: a few images recomputed alone (`image_indices`)
    give the run's records bit for bit, random methods included."""
    images = reference_images[:6]
    labels = vit(images).argmax(-1).detach()
    settings = dict(sweep=SWEEP, methods=("rrm", "random", "random_authors"), seed=11)
    full = evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, progress=False,
                                 config=FaithfulnessConfig(batch_size=4, **settings))
    part = evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, progress=False,
                                 config=FaithfulnessConfig(batch_size=2, image_indices=(5, 1, 4),
                                                           **settings))
    assert part.image_indices == [1, 4, 5]
    rows = [full.image_indices.index(i) for i in part.image_indices]
    for m in settings["methods"]:
        for mode in ("insertion", "deletion"):
            for q, got in part.image_curves[m][mode].items():
                assert np.array_equal(got, full.image_curves[m][mode][q][rows]), (m, mode, q)
    # The random circuits are really random: images draw different slots at the same count.
    gens = image_generators(FaithfulnessConfig(seed=11), torch.tensor([1, 4]))
    for m in RANDOM_METHODS:
        a, b = (torch.rand(50, generator=g) for g in gens[m])
        assert not torch.equal(a, b)


def test_image_seeds_separate_seed_method_and_image():
    keys = [(seed, m, i) for seed in (0, 1, 42) for m in METHODS for i in (0, 1, 2, 64, 353)]
    seeds = {image_seed(*k) for k in keys}
    assert len(seeds) == len(keys) and all(0 <= s < 2 ** 64 for s in seeds)
    assert image_seed(42, "random", 7) == image_seed(42, "random", 7)
    gens = image_generators(FaithfulnessConfig(seed=42), torch.tensor([7, 3]))
    assert [g.initial_seed() for g in gens["random"]] == [image_seed(42, "random", 7),
                                                          image_seed(42, "random", 3)]


def test_image_indices_must_be_correct_images(vit, saes, reference_images, baselines):
    # The settings' own checks: tests/metrics/test_image_indices.py.
    images = reference_images[:4]
    labels = vit(images).argmax(-1).detach()
    labels[2] = (labels[2] + 1) % vit.cfg.n_classes  # image 2 is now misclassified
    for bad, named in (((2, 0), "[2]"), ((0, 9), "[9]")):
        with pytest.raises(RRMUserError, match=re.escape(named)):
            evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, progress=False,
                                  config=FaithfulnessConfig(sweep=SWEEP, methods=("rrm",),
                                                            image_indices=bad))


def test_method_scores_for_random_alone_and_for_the_logit_metric(vit, saes, images, baselines):
    layout = sae_layout(saes)
    y = vit(images).argmax(-1)
    only_random = FaithfulnessConfig(methods=("random",))
    scores = method_scores(vit, saes, images, y, baselines=baselines, config=only_random,
                           layout=layout)
    masks = method_masks(scores, value=0.5, config=only_random, layout=layout,
                         batch=len(images), generators=fresh_generators(batch=len(images)))
    assert list(masks) == ["random"]
    config = FaithfulnessConfig(methods=("rrm", "non_linearised"), metric="logit")
    scores = method_scores(vit, saes, images, y, baselines=baselines, config=config,
                           layout=layout)
    from rrm_plugin.metrics.faithfulness import NON_LINEARISED

    for method, lin in (("rrm", None), ("non_linearised", NON_LINEARISED)):
        kwargs = {} if lin is None else {"linearisation": lin}
        logit = _dense_rrm_scores(attribution_forward(vit, saes, images, baselines=baselines,
                                                      classes=y, metric="logit", **kwargs))
        adjusted = _dense_rrm_scores(attribution_forward(vit, saes, images, baselines=baselines,
                                                         classes=y, **kwargs))
        for got, want, other in zip(scores[method], logit, adjusted, strict=True):
            torch.testing.assert_close(got, want)
            assert not torch.allclose(got, other, atol=1e-4)


def test_neuron_scores_with_frozen_parameters(vit, saes, images, baselines):
    layout = sae_layout(saes)
    y = vit(images).argmax(-1)
    want = neuron_scores(vit, layout.hook_names, images, y, baselines, "adjusted_logit")
    for p in vit.parameters():
        p.requires_grad_(False)
    got = neuron_scores(vit, layout.hook_names, images, y, baselines, "adjusted_logit")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def resid_at_baseline_logits(vit, hook_names, images, baselines):
    hooks = [(h, lambda x, hook, b=baselines.resid[h]: b.expand_as(x)) for h in hook_names]
    with torch.no_grad():
        return vit.run_with_hooks(images, fwd_hooks=hooks)


def test_neuron_circuits_in_both_modes_end_points(vit, saes, reference_images, baselines):
    images = reference_images[:4]
    labels = vit(images).argmax(-1).detach()
    config = FaithfulnessConfig(sweep=SWEEP, methods=("neuron",))
    res = evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, config=config,
                                progress=False)
    clean = float(adjusted(vit(images).detach(), labels))
    hooks = sae_layout(saes).hook_names
    base = float(adjusted(resid_at_baseline_logits(vit, hooks, images, baselines), labels))
    assert abs(clean - base) > 0.1
    ins, dele = (res.curves["neuron"][mode]["adjusted_logit"] for mode in ("insertion",
                                                                          "deletion"))
    assert ins[0] == pytest.approx(base, abs=1e-4) and ins[-1] == pytest.approx(clean, abs=1e-4)
    assert dele[0] == pytest.approx(clean, abs=1e-4) and dele[-1] == pytest.approx(base, abs=1e-4)
    # Half the dimensions: deletion keeps the complement of insertion's kept dimensions.
    assert ins[1] != pytest.approx(dele[1], abs=1e-3)


def test_run_uses_the_image_subset_of_the_configs_seed(vit, saes, reference_images, baselines):
    images = reference_images[:6]
    labels = vit(images).argmax(-1).detach()
    config = FaithfulnessConfig(sweep=SWEEP, methods=("random_authors",), n_images=2, seed=3)
    res = evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, config=config,
                                progress=False)
    assert res.image_indices == select_images(torch.arange(6), 2, 3).tolist()
    assert len(res.image_curves["random_authors"]["insertion"]["logit"]) == 2


def test_run_refuses_when_no_image_is_correct(vit, saes, images, baselines):
    wrong = (vit(images).argmax(-1) + 1) % vit.cfg.n_classes
    with pytest.raises(ValueError, match="^no image is classified correctly; faithfulness needs "
                                         "correct images$"):
        evaluate_faithfulness(vit, saes, images, wrong, baselines=baselines, progress=False,
                              config=FaithfulnessConfig(sweep=SWEEP, methods=("random",)))


def test_progress_bar_of_the_run_only(vit, saes, images, baselines, capsys):
    labels = vit(images).argmax(-1).detach()
    evaluate_faithfulness(vit, saes, images, labels, baselines=baselines,
                          config=FaithfulnessConfig(sweep=SWEEP, methods=("random_authors",)))
    assert re.search(r"(^|\r)faithfulness: ", capsys.readouterr().err)  # shown by default
    evaluate_faithfulness(vit, saes, images, labels, baselines=baselines, progress=False,
                          config=FaithfulnessConfig(sweep=SWEEP, methods=("random_authors",)))
    assert capsys.readouterr().err == ""


def test_sae_layout_of_one_sae_and_its_default_skip():
    from rrm_plugin.saes.training import new_topk_sae

    hook = "blocks.3.hook_resid_post"
    layout = sae_layout({hook: new_topk_sae(d_in=5, d_sae=7, k=1, hook_name=hook,
                                            model_name="m")})
    assert layout == Layout([hook], [8], 5, 0, torch.device("cpu"))


def test_image_aucs_of_float32_curves_and_of_no_points():
    rng = np.random.default_rng(0)
    y32 = rng.normal(size=(300, 5)).astype(np.float32)
    x32 = np.sort(rng.uniform(size=5)).astype(np.float32)
    y, x = y32.astype(np.float64), x32.astype(np.float64)
    np.testing.assert_allclose(image_aucs(y32, x=x32), trapezoid_auc(y, x), rtol=1e-12)
    empty = image_aucs(np.zeros((3, 0)), x=np.zeros(0))
    assert empty.shape == (3,) and np.isnan(empty).all()
