"""`run_lens`'s summary, entry by entry: exact keys, and every number equal to its (separately
tested) analysis run by hand on the same inputs with the configured settings. Non-default
settings everywhere, so a setting dropped on the way shows."""

from types import SimpleNamespace

import pytest
import torch

from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.lens import importance as imp
from rrm_plugin.lens import metrics
from rrm_plugin.lens.features import feature_lens
from rrm_plugin.lens.memories import class_value_agreement, memory_agreement
from rrm_plugin.lens.probes import compare_with_probes, probe_importance
from rrm_plugin.lens.projection import project_images
from rrm_plugin.lens.report import LensConfig, run_lens
from rrm_plugin.saes.training import new_topk_sae
from tests.conftest import tiny_vit_config

CONFIG = LensConfig(batch_size=3, n_permutations=20, memory_top_k=2, random_repeats=2,
                    random_shared_seeds=2, probe_alpha=0.5, softmax_before_ce=False,
                    feature_top_k=2, seed=3, progress=False)
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def run():
    """One full run on a tiny ViT (3 blocks, 5 classes, CLS + 16 patches, 10 images) with sharp
    (15x) weights, so removing patches changes predictions and different orders give different
    curves; labels are its own predictions except for 3 images."""
    model = build_hooked_vit(tiny_vit_config(image_size=16), seed=0).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.mul_(15)
    control = build_hooked_vit(model.cfg, seed=1).eval()
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(10, 3, 16, 16, generator=gen)
    with torch.no_grad():
        labels = model(images).argmax(-1)
    labels[:3] = (labels[:3] + 1) % 5
    mask = torch.rand(10, 16, generator=gen).argsort(-1) < 6  # 6 object patches per image
    train = torch.rand(20, 3, 16, 16, generator=gen)
    train_labels = torch.randint(0, 5, (20,), generator=gen)
    saes = {hook: new_topk_sae(d_in=16, d_sae=32, k=4, hook_name=hook, model_name="tiny", seed=i)
            for i, hook in enumerate(HOOKS)}
    results = run_lens(model, images=images, labels=labels, object_mask=mask,
                       probe_images=train, probe_labels=train_labels, control=control,
                       saes=saes, config=CONFIG)
    return SimpleNamespace(model=model, control=control, images=images, labels=labels, mask=mask,
                           train=train, train_labels=train_labels, saes=saes, results=results,
                           summary=results.summary)


def as_lists(t):
    """A NamedTuple of tensors as {field: list}."""
    return {k: v.tolist() for k, v in t._asdict().items() if isinstance(v, torch.Tensor)}


def assert_close(actual, expected):
    """Nested dicts / lists of numbers equal up to float32 rounding."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected)
        for k in expected:
            assert_close(actual[k], expected[k])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e)
    elif isinstance(expected, str):
        assert actual == expected
    else:
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_summary_keys_header_and_settings(run):
    s = run.summary
    assert set(s) == {
        "model", "n_images", "accuracy", "config", "paper", "identifiability", "change_rate",
        "sublayer_change_rate", "residual_composition", "context_vs_object", "object_fraction",
        "memories", "importance", "linear_probes", "perturbation", "feature_lens"}
    assert s["model"] == {"name": run.model.cfg.model_name, "n_layers": 3, "d_model": 16,
                          "n_classes": 5, "n_patches": 16, "n_prefix_tokens": 1,
                          "classification_type": "cls"}
    assert s["n_images"] == 10
    with torch.no_grad():
        correct = [int(run.model(img[None]).argmax()) == int(y)
                   for img, y in zip(run.images, run.labels, strict=True)]
    assert sum(correct) == 7 and s["accuracy"] == 0.7
    assert s["config"] == {
        "batch_size": 3, "n_permutations": 20, "memory_top_k": 2, "random_repeats": 2,
        "random_shared_seeds": 2, "probe_alpha": 0.5, "softmax_before_ce": False,
        "map_blocks": None, "n_example_images": 6, "feature_top_k": 2, "seed": 3,
        "progress": False}
    # The paper's numbers (Vilas et al. 2023; docs/method.md section 6).
    assert s["paper"] == {
        "identifiability_rate_last_block": "60.7% (ViT-B/32) to 90.4% (ViT-B/16 CIFAR-100)",
        "perturbation_auc_vit_b32": {"ours_negative": 0.836, "ours_positive": 0.413,
                                     "random": 0.716, "linear_probe_negative": 0.739,
                                     "linear_probe_positive": 0.683}}


def test_class_building_entries(run):
    s = run.summary
    proj = project_images(run.model, run.images, progress=False)
    labels = run.labels
    assert_close(s["identifiability"],
                 as_lists(metrics.block_identifiability(proj.resid, labels=labels, n_prefix=1)))
    rate = metrics.change_rate(proj.resid_prev, proj.resid, labels=labels, n_prefix=1)
    assert_close(s["change_rate"], rate.tolist())
    assert_close(s["sublayer_change_rate"],
                 as_lists(metrics.sublayer_change_rates(proj, labels=labels, n_prefix=1)))
    assert_close(s["residual_composition"], as_lists(metrics.residual_composition(proj)))
    # Context vs object on image tokens only, with the configured permutations and seed.
    rank = metrics.class_rank(proj.resid, labels=labels)[..., 1:]
    tested = {"identifiability": metrics.identifiability_score(rank, n_classes=5)}
    for kind in ("attn", "mlp"):
        tested[f"{kind}_class_change"] = metrics.sublayer_class_change(
            proj, labels=labels, kind=kind)[..., 1:]
    expected = {name: [t._asdict() for t in metrics.context_vs_object(
        values, object_mask=run.mask, n_permutations=20, seed=3)]
        for name, values in tested.items()}
    assert_close(s["context_vs_object"], expected)
    assert s["object_fraction"] == pytest.approx(run.mask.sum().item() / 160)
    torch.testing.assert_close(run.results.token_scores, tested["identifiability"])


def test_memory_entries(run):
    for kind in ("attn", "mlp"):
        expected = as_lists(memory_agreement(run.model, run.images, labels=run.labels, kind=kind,
                                             k=2, seed=3, progress=False))
        expected["class_value_agreement"] = as_lists(
            class_value_agreement(run.model, run.control, kind=kind))
        assert_close(run.summary["memories"][kind], expected)
        top5 = memory_agreement(run.model, run.images, labels=run.labels, kind=kind, seed=3,
                                progress=False)
        assert expected["key_value_all"] != top5.key_value_all.tolist()  # k matters here
    assert set(run.summary["memories"]) == {"attn", "mlp"}


def comparison(run):
    return compare_with_probes(run.model, train_images=run.train, train_labels=run.train_labels,
                               test_images=run.images, test_labels=run.labels, alpha=0.5,
                               progress=False)


def test_probe_entries(run):
    comp = comparison(run)
    probe, lens = comp.probe_accuracy, comp.projection_accuracy
    n_kinds = len(comp.kinds)
    # Image-token accuracy: the mean over tokens 1..16 (CLS left out), per kind and block.
    image_tokens = [[[sum(acc[k, b, 1:].tolist()) / 16 for b in range(3)] for k in range(n_kinds)]
                    for acc in (probe, lens)]
    assert_close(run.summary["linear_probes"], {
        "n_train_images": 20, "kinds": list(comp.kinds),
        "probe_accuracy": probe.tolist(), "projection_accuracy": lens.tolist(),
        "probe_accuracy_image_tokens": image_tokens[0],
        "projection_accuracy_image_tokens": image_tokens[1],
        "probe_accuracy_cls": probe[..., 0].tolist(),
        "projection_accuracy_cls": lens[..., 0].tolist(),
    })


def curve(run, order, mode="negative"):
    return imp.perturbation_curve(run.model, run.images, labels=run.labels, order=order, mode=mode,
                              progress=False)


def test_importance_and_perturbation_entries(run):
    s, mask = run.summary, run.mask
    by_block = imp.importance_by_block(run.model, run.images, labels=run.labels,
                                   softmax_before_ce=False, progress=False)
    importance = by_block[0] + by_block[1] + by_block[2]
    default_loss = imp.importance_by_block(run.model, run.images, labels=run.labels, progress=False)
    assert not torch.allclose(importance, default_loss.sum(0))  # the setting matters here
    torch.testing.assert_close(run.results.importance, importance)
    assert_close(s["importance"], {
        "object_mean_by_block": [b[mask].mean().item() for b in by_block],
        "context_mean_by_block": [b[~mask].mean().item() for b in by_block],
        "object_mean": importance[mask].mean().item(),
        "context_mean": importance[~mask].mean().item(),
    })
    pert = s["perturbation"]
    assert set(pert) == {"auc", "auc_inclusive", "curves", "fraction_removed", "diagnostics"}
    assert pert["fraction_removed"] == [i / 16 for i in range(16)]
    probe_order = imp.importance_order(probe_importance(comparison(run).resid_rank, n_prefix=1))
    expected = {f"ours_{m}": curve(run, imp.importance_order(importance), m)
                for m in ("negative", "positive")}
    expected.update({f"linear_probe_{m}": curve(run, probe_order, m)
                     for m in ("negative", "positive")})
    # Random baselines: seeds 3 and 4 averaged, per image and shared.
    for name, shared in (("random_per_image", False), ("random_shared", True)):
        expected[name] = sum(curve(run, imp.random_order(10, 16, seed=s, shared=shared))
                             for s in (3, 4)) / 2
    one_seed = curve(run, imp.random_order(10, 16, seed=3))
    assert not torch.allclose(expected["random_per_image"], one_seed)
    for name, c in expected.items():
        assert_close(pert["curves"][name], c.tolist())
        torch.testing.assert_close(run.results.curves[name], c)
        assert pert["auc"][name] == pytest.approx(imp.perturbation_auc(c))
        assert pert["auc_inclusive"][name] == pytest.approx(
            imp.perturbation_auc(c, normalisation="inclusive"))
    assert set(run.results.curves) == set(pert["curves"]) == set(pert["auc"]) == {
        *expected, "chefer_negative", "chefer_positive", "object_mask_negative",
        "object_mask_positive"}
    # Reference ranking, object patches first: whatever the order within each group, removing
    # the 6 most important (positive) removes exactly the object, the 10 least (negative) the
    # context.
    object_first = (~mask).long().argsort(dim=-1, stable=True)
    for mode, k in (("positive", 6), ("negative", 10)):
        assert pert["curves"][f"object_mask_{mode}"][k] == pytest.approx(
            curve(run, object_first, mode)[k].item())
    diagnostics = pert["diagnostics"]
    assert set(diagnostics) == {"mode", "auc", "auc_inclusive", "curves",
                                "least_important_quarter"}
    assert diagnostics["mode"] == "negative"
    c0 = curve(run, imp.importance_order(by_block[0]))
    assert_close(diagnostics["curves"]["block_0_only"], c0.tolist())
    assert diagnostics["auc_inclusive"]["block_0_only"] == pytest.approx(
        imp.perturbation_auc(c0, normalisation="inclusive"))
    assert diagnostics["least_important_quarter"]["object_share"]["ours"] == pytest.approx(
        imp.least_important_object_share(imp.importance_order(importance), object_mask=mask))


def test_feature_lens_entries(run):
    lens = feature_lens(run.model, run.saes, top_k=2)
    assert set(run.summary["feature_lens"]) == set(HOOKS) == set(run.results.feature_scores)
    for hook in HOOKS:
        fc = lens[hook]
        counts = [int((fc.top_classes[:, 0] == c).sum()) for c in range(5)]
        assert_close(run.summary["feature_lens"][hook], {
            "d_sae": 32, "top_classes": fc.top_classes.tolist(),
            "top_scores": fc.top_scores.tolist(), "features_per_top_class": counts})
        assert fc.top_classes.shape == (32, 2)
        torch.testing.assert_close(run.results.feature_scores[hook], fc.scores)


def test_features_per_top_class_lists_every_class():
    # Every decoder direction is class 0's head column: class 0 tops all 32 features, and the
    # count list still has an entry (0) for each of the 5 classes.
    model = build_hooked_vit(tiny_vit_config(n_layers=1), seed=0).eval()
    sae = new_topk_sae(d_in=16, d_sae=32, k=4, hook_name=HOOKS[0], model_name="tiny", seed=0)
    with torch.no_grad():
        sae.W_dec.copy_(model.head.W_H[:, 0].expand(32, -1))
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    summary = run_lens(model, images=images, labels=torch.tensor([0, 1]), saes={HOOKS[0]: sae},
                       config=LensConfig(random_repeats=1, random_shared_seeds=1,
                                         progress=False)).summary
    assert summary["feature_lens"][HOOKS[0]]["features_per_top_class"] == [32, 0, 0, 0, 0]


@pytest.mark.parametrize("n_layers, parts", [
    (1, {"block_0_only"}),  # one block: nothing is left without the last one
    (2, {"block_0_only", "block_1_only", "without_last_block"}),
])
def test_diagnostic_parts_by_depth(n_layers, parts, capfd):
    model = build_hooked_vit(tiny_vit_config(n_layers=n_layers), seed=0).eval()
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    results = run_lens(model, images=images, labels=torch.tensor([0, 1, 2]),
                       config=LensConfig(random_repeats=1, random_shared_seeds=1,
                                         progress=False))
    diagnostics = results.summary["perturbation"]["diagnostics"]
    assert set(diagnostics) == {"mode", "auc", "auc_inclusive", "curves"}  # no object mask
    assert set(diagnostics["curves"]) == set(diagnostics["auc"]) == parts
    assert "importance" not in results.summary and "context_vs_object" not in results.summary
    assert results.summary["memories"]["mlp"].keys().isdisjoint({"class_value_agreement"})
    assert results.feature_scores == {} and "feature_lens" not in results.summary
    assert capfd.readouterr().err == ""  # progress=False: no progress bar anywhere
