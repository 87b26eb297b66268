"""What `write_lens_report` writes and what `format_summary` prints, from hand-written results."""

import json

import numpy as np
import pytest
import torch

from rrm_plugin.io import read_tensors
from rrm_plugin.lens.report import LensConfig, LensResults
from rrm_plugin.lens.report_output import format_summary, write_lens_report
from tests.lens.test_lens_plots import SIDE, hand_summary, token_map_inputs


def hand_results(summary):
    _, _, scores = token_map_inputs()  # 3 blocks, 2 images, 3 x 3 patches
    scores = torch.cat([scores, scores.flip(1)], 1)  # 4 images
    return LensResults(
        summary, scores, importance=torch.arange(4 * SIDE * SIDE, dtype=torch.float32).view(4, -1),
        curves={"ours_negative": torch.tensor([1.0, 0.5]), "random_shared": torch.tensor([0.25])},
        feature_scores={"blocks.0.hook_resid_post": torch.eye(2)})


def images_and_labels():
    images = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    return images, torch.tensor([3, 1, 4, 1])


@pytest.fixture
def figures(kept_figures):
    """Every figure the report saves, in order."""
    return kept_figures


def test_report_files_round_trip(tmp_path, figures):
    summary = hand_summary()
    results = hand_results(summary)
    images, labels = images_and_labels()
    out = tmp_path / "new" / "dir"  # parents created
    paths = write_lens_report(results, out, images=images, labels=labels,
                              config=LensConfig(n_example_images=6))
    assert paths == [out / name for name in (
        "lens.json", "lens_tensors.safetensors", "identifiability.png", "token_maps.png",
        "perturbation.png", "mechanisms.png", "probes.png")]
    assert all(p.stat().st_size > 0 for p in paths)
    assert json.loads((out / "lens.json").read_text()) == summary
    tensors = read_tensors(out / "lens_tensors.safetensors")
    assert set(tensors) == {"token_identifiability", "patch_importance", "curve.ours_negative",
                            "curve.random_shared", "feature_class_scores.blocks.0.hook_resid_post"}
    torch.testing.assert_close(tensors["token_identifiability"], results.token_scores)
    torch.testing.assert_close(tensors["patch_importance"], results.importance)
    torch.testing.assert_close(tensors["curve.ours_negative"], torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(tensors["curve.random_shared"], torch.tensor([0.25]))
    torch.testing.assert_close(tensors["feature_class_scores.blocks.0.hook_resid_post"],
                               torch.eye(2))
    # One figure per PNG, in order; the maps show every block of all 4 images (fewer than 6).
    titles = [f.axes[0].get_title() for f in figures]
    assert len(titles) == 5 and titles[2].startswith("patch removal")
    assert titles[:2] + titles[3:] == ["mean class identifiability", "label 3",
                                       "class-similarity change rate",
                                       "resid: image-token top-1 accuracy"]
    maps = np.array(figures[1].axes).reshape(4, 4)
    assert [ax.get_title() for ax in maps[0, 1:]] == ["block 1", "block 2", "block 3"]
    assert [ax.get_title() for ax in maps[:, 0]] == ["label 3", "label 1", "label 4", "label 1"]
    np.testing.assert_array_equal(np.asarray(maps[3, 2].images[0].get_array()),
                                  results.token_scores[1, 3].reshape(SIDE, SIDE).numpy())
    assert not any(ax.collections for ax in figures[1].axes)  # no object mask, no outlines


def test_report_into_an_existing_dir_with_chosen_blocks_and_mask(tmp_path, figures):
    summary = hand_summary()
    del summary["linear_probes"]
    images, labels = images_and_labels()
    mask = torch.zeros(4, SIDE * SIDE, dtype=torch.bool)
    mask[:, 4] = True
    config = LensConfig(map_blocks=(2, 0), n_example_images=2)
    for _ in range(2):  # the second run overwrites
        paths = write_lens_report(hand_results(summary), tmp_path, images=images, labels=labels,
                                  object_mask=mask, config=config)
    assert [p.name for p in paths][-1] == "mechanisms.png"  # no probes, no probes.png
    assert not (tmp_path / "probes.png").exists()
    maps = np.array(figures[1].axes).reshape(2, 3)
    assert [ax.get_title() for ax in maps[0]] == ["label 3", "block 3", "block 1"]
    assert [ax.get_title() for ax in maps[1]] == ["label 1", "", ""]
    assert [len(ax.collections) for ax in maps.flat] == [0, 1, 1, 0, 1, 1]  # outlines


@pytest.mark.parametrize("blocks, bad", [((-1, 0), [-1]), ((0, 3, 2, 4), [3, 4])])
def test_report_rejects_blocks_out_of_range(tmp_path, blocks, bad):
    images, labels = images_and_labels()
    with pytest.raises(ValueError) as err:
        write_lens_report(hand_results(hand_summary()), tmp_path, images=images, labels=labels,
                          config=LensConfig(map_blocks=blocks))
    assert str(err.value) == f"map_blocks {bad} out of range: the model has blocks 0..2"


def format_input():
    return {
        "accuracy": 0.875, "n_images": 8,
        "identifiability": {"identifiability_rate": [12.34, 56.78],
                            "images_with_identifiable_token": [50.0, 100.0]},
        "perturbation": {
            "auc": {"ours_negative": 0.81234, "chefer_positive": None, "random_shared": 0.5},
            "diagnostics": {
                "auc": {"block_0_only": 0.7, "block_1_only": None, "without_last_block": 0.65},
                "least_important_quarter": {"base_rate": 0.25,
                                            "object_share": {"ours": 0.125, "chefer": 0.375}},
            },
        },
        "memories": {"attn": {"key_value_all": [31.0, 32.5], "key_value_control": [1.0, 2.0]},
                     "mlp": {"key_value_all": [41.0, 42.0], "key_value_control": [4.25, 5.0]}},
        "context_vs_object": {"identifiability": [
            {"difference": 0.125, "p_value": 0.01234, "p_value_lower": 0.98765},
            {"difference": -0.25, "p_value": 1.0, "p_value_lower": 0.001},
        ]},
    }


def test_format_summary_lines():
    assert format_summary(format_input()).split("\n") == [
        "accuracy 87.5% on 8 images",
        "identifiability rate per block (% image tokens, true class top-1): 12.3, 56.8"
        "  [paper, last block: 60.7% (ViT-B/32) to 90.4% (ViT-B/16 CIFAR-100)]",
        "images with >= 1 identifiable token per block (%): 50.0, 100.0",
        "perturbation AUC (authors' normalisation): ours_negative 0.812, random_shared 0.500"
        "  [paper B/32: ours 0.836/0.413, random 0.716, probe 0.739/0.683]",
        "negative AUC of importance parts: block_0_only 0.700, without_last_block 0.650",
        "object share of the least important quarter of patches: ours 12.5%, chefer 37.5%"
        " (base rate 25.0%)",
        "attn key-value agreement per block (%): 31.0, 32.5 (wrong-class control: 1.0, 2.0)",
        "mlp key-value agreement per block (%): 41.0, 42.0 (wrong-class control: 4.2, 5.0)",
        "object - context identifiability per block: +0.125 (p_obj>ctx=0.0123, p_obj<ctx=0.988),"
        " -0.250 (p_obj>ctx=1, p_obj<ctx=0.001)",
    ]


def test_format_summary_leaves_out_missing_parts():
    summary = format_input()
    del summary["context_vs_object"]
    del summary["perturbation"]["diagnostics"]["least_important_quarter"]
    lines = format_summary(summary).split("\n")
    assert len(lines) == 7
    assert lines[4] == ("negative AUC of importance parts: block_0_only 0.700, "
                        "without_last_block 0.650")
    assert lines[6].startswith("mlp key-value agreement per block (%): 41.0, 42.0")
    del summary["perturbation"]["diagnostics"]
    assert format_summary(summary).split("\n") == lines[:4] + lines[5:]
