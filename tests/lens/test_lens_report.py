import json

import pytest
import torch

from rrm_plugin.cli import lens as lens_cli
from rrm_plugin.cli.main import build_parser
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.lens.importance import (
    chefer_rollout_importance,
    importance_by_block,
    importance_order,
    least_important_object_share,
    perturbation_auc,
    perturbation_curve,
    random_order,
)
from rrm_plugin.lens.report import LensConfig, run_lens
from rrm_plugin.lens.report_output import format_summary, write_lens_report
from tests.conftest import tiny_vit_config


@pytest.fixture
def lens_inputs(tiny_vit):
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(10, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 5, (10,), generator=gen)
    mask = torch.rand(10, 4, generator=gen) > 0.5
    mask[:, 0], mask[:, 1] = True, False  # both groups always present
    train = torch.rand(20, 3, 8, 8, generator=gen)
    train_labels = torch.randint(0, 5, (20,), generator=gen)
    return images, labels, mask, train, train_labels


def test_run_lens_and_report(tiny_vit, tiny_saes, lens_inputs, tmp_path):
    images, labels, mask, train, train_labels = lens_inputs
    control = build_hooked_vit(tiny_vit.cfg, seed=1).eval()
    config = LensConfig(n_permutations=20, random_repeats=2, progress=False, map_blocks=(0, 2),
                        n_example_images=3)
    results = run_lens(tiny_vit, images=images, labels=labels, object_mask=mask,
                       probe_images=train, probe_labels=train_labels, control=control,
                       saes=tiny_saes, config=config)
    paths = write_lens_report(results, tmp_path, images=images, labels=labels, object_mask=mask,
                              config=config)
    names = {p.name for p in paths}
    assert {"lens.json", "lens_tensors.safetensors", "identifiability.png", "token_maps.png",
            "perturbation.png", "mechanisms.png", "probes.png"} <= names
    summary = json.loads((tmp_path / "lens.json").read_text())
    n_layers = tiny_vit.cfg.n_layers
    assert len(summary["identifiability"]["identifiability_rate"]) == n_layers
    assert len(summary["context_vs_object"]["identifiability"]) == n_layers
    pert = summary["perturbation"]
    assert set(pert["auc"]) == set(pert["auc_inclusive"]) == set(pert["curves"]) == {
        "ours_negative", "ours_positive", "chefer_negative", "chefer_positive",
        "linear_probe_negative", "linear_probe_positive", "object_mask_negative",
        "object_mask_positive", "random_per_image", "random_shared"}
    for name, curve in results.curves.items():
        assert pert["auc"][name] == pytest.approx(perturbation_auc(curve))
        assert pert["auc_inclusive"][name] == pytest.approx(
            perturbation_auc(curve, normalisation="inclusive"))
    diagnostics = pert["diagnostics"]
    assert set(diagnostics["auc"]) == set(diagnostics["curves"]) == {
        "block_0_only", "block_1_only", "block_2_only", "without_last_block"}
    quarter = diagnostics["least_important_quarter"]
    assert quarter["base_rate"] == pytest.approx(float(mask.float().mean()))
    assert quarter["object_share"]["ours"] == pytest.approx(least_important_object_share(
        importance_order(results.importance), object_mask=mask))
    assert len(summary["importance"]["object_mean_by_block"]) == n_layers
    # Nothing removed: every curve starts at the model's accuracy.
    for curve in summary["perturbation"]["curves"].values():
        assert curve[0] == pytest.approx(summary["accuracy"])
    assert summary["memories"]["mlp"]["class_value_agreement"]["p_value"]
    assert len(summary["feature_lens"]["blocks.0.hook_resid_post"]["top_classes"]) == 32
    assert results.token_scores.shape == (n_layers, 10, 4)
    assert "identifiability rate" in format_summary(summary)


def test_run_lens_input_checks(tiny_vit, lens_inputs, tmp_path):
    images, labels, mask, train, _ = lens_inputs
    config = LensConfig(progress=False)
    with pytest.raises(ValueError, match="object_mask has shape"):
        run_lens(tiny_vit, images=images, labels=labels, object_mask=mask[:, :3], config=config)
    with pytest.raises(ValueError, match="both probe_images and probe_labels"):
        run_lens(tiny_vit, images=images, labels=labels, probe_images=train, config=config)
    with pytest.raises(ValueError, match=r"expected \[10\]"):
        run_lens(tiny_vit, images=images, labels=labels[:5], config=config)


def test_cli_registers_lens():
    args = build_parser().parse_args(["lens", "--out", "somewhere", "--blocks", "0", "3"])
    assert args.run is lens_cli.run
    assert args.blocks == [0, 3] and args.release == "rrm-digits-vit"
    assert args.random_shared_seeds == 10 == LensConfig().random_shared_seeds
    args = build_parser().parse_args(["lens", "--out", "x", "--random-shared-seeds", "4"])
    assert args.random_shared_seeds == 4


def test_run_lens_on_a_mean_pooled_model(hand, lens_inputs):
    images, labels, mask, _, _ = lens_inputs
    model = build_hooked_vit(hand.config(classification_type="gaap"), seed=0).eval()
    results = run_lens(model, images=images, labels=labels, object_mask=mask,
                       config=LensConfig(n_permutations=10, random_repeats=1, progress=False))
    summary = results.summary
    assert summary["identifiability"]["cls_score"] == [None] * 2  # no CLS token
    # Both importances need a CLS token: only the reference orders remain, and no diagnostics.
    assert set(summary["perturbation"]["auc"]) == {
        "random_per_image", "random_shared", "object_mask_negative", "object_mask_positive"}
    assert "diagnostics" not in summary["perturbation"]
    assert results.importance.shape == (10, 4) and results.importance.isnan().all()
    for name in ("random_per_image", "random_shared"):
        assert summary["perturbation"]["curves"][name][0] == pytest.approx(summary["accuracy"])


def test_diagnostic_and_random_curves_are_the_documented_experiments():
    # A tiny ViT with sharp (15x) weights, 16 patches, and labels = its own predictions, so
    # removal changes predictions and different orders give different curves.
    model = build_hooked_vit(tiny_vit_config(image_size=16), seed=0).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.mul_(15)
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(24, 3, 16, 16, generator=gen)
    labels = model(images).argmax(-1)
    mask = torch.rand(24, 16, generator=gen) > 0.6
    config = LensConfig(n_permutations=5, random_repeats=1, random_shared_seeds=2, seed=4,
                        progress=False)
    summary = run_lens(model, images=images, labels=labels, object_mask=mask,
                       config=config).summary
    pert, diagnostics = summary["perturbation"], summary["perturbation"]["diagnostics"]
    by_block = importance_by_block(model, images, labels=labels, progress=False)
    rollout = chefer_rollout_importance(model, images, labels=labels, progress=False)

    def curve(order, mode="negative"):
        return perturbation_curve(model, images, labels=labels, order=order, mode=mode,
                                  progress=False)

    expected = {f"block_{b}_only": curve(importance_order(by_block[b])) for b in range(3)}
    expected["without_last_block"] = curve(importance_order(by_block[0] + by_block[1]))
    # The parts rank differently (otherwise this test could not tell them apart).
    assert len({tuple(c.tolist()) for c in expected.values()}) == 4
    for name, c in expected.items():
        assert diagnostics["curves"][name] == pytest.approx(c.tolist()), name
        assert diagnostics["auc"][name] == pytest.approx(perturbation_auc(c))
    assert diagnostics["mode"] == "negative"
    for mode in ("negative", "positive"):
        assert pert["curves"][f"chefer_{mode}"] == pytest.approx(
            curve(importance_order(rollout), mode).tolist())
    # Shared: one permutation per seed (4, 5) for every image, curves averaged over seeds.
    n = len(images)
    shared = [torch.randperm(16, generator=torch.Generator().manual_seed(s)).expand(n, -1)
              for s in (4, 5)]
    mean_shared = (curve(shared[0]) + curve(shared[1])) / 2
    per_image = curve(random_order(n, 16, seed=4))
    assert not torch.allclose(mean_shared, per_image)
    assert not torch.allclose(mean_shared, curve(shared[0]))
    assert pert["curves"]["random_shared"] == pytest.approx(mean_shared.tolist())
    assert pert["curves"]["random_per_image"] == pytest.approx(per_image.tolist())
    assert summary["config"]["random_shared_seeds"] == 2
    quarter = diagnostics["least_important_quarter"]["object_share"]
    for name, importance in (("ours", by_block.sum(0)), ("chefer", rollout)):
        assert quarter[name] == pytest.approx(least_important_object_share(
            importance_order(importance), object_mask=mask))
    assert quarter["ours"] != pytest.approx(quarter["chefer"])


@pytest.mark.parametrize("extended", [
    dict(n_registers=2, head_type="cls_mean_patch"),  # DINOv2-like
    dict(activation_name="quick_gelu", layer_norm_pre=True, head_type="normalized_projection",
         projection_dim=6),  # CLIP-like
])
def test_run_lens_on_register_and_clip_style_vits(extended):
    from rrm_plugin.hosts.vit import ExtendedViTConfig, n_prefix_tokens
    from tests.conftest import tiny_vit_config

    cfg = ExtendedViTConfig(**{**vars(tiny_vit_config()), **extended})
    model = build_hooked_vit(cfg, seed=0).eval()
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = model(images).argmax(-1)
    results = run_lens(model, images=images, labels=labels,
                       config=LensConfig(n_permutations=5, random_repeats=1, progress=False))
    n_patches = 4  # 8x8 image, patch 4; CLS and registers are never scored as patches
    assert results.token_scores.shape == (3, 6, n_patches)
    assert results.importance.shape == (6, n_patches) and torch.isfinite(results.importance).all()
    assert results.summary["model"]["n_prefix_tokens"] == n_prefix_tokens(model)
    assert results.summary["accuracy"] == 1.0  # labels are the model's own predictions
