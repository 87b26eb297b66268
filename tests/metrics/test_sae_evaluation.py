import math

import pytest
import torch

import rrm_plugin
from rrm_plugin.metrics.sae_evaluation import (
    _zero_ablation,
    downstream_metrics,
    evaluate_saes,
    format_table,
    reconstruction_metrics,
)
from rrm_plugin.saes.training import new_topk_sae


def _lossless_sae(d: int, hook: str):
    """W_enc = [I, -I], W_dec = [I; -I], k = d: positive and negative parts of x_n, summed back.

    Reconstructs x up to the 1e-5 epsilon of the standardisation.
    """
    sae = new_topk_sae(d_in=d, d_sae=2 * d, k=d, hook_name=hook, model_name="tiny")
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def test_lossless_sae_scores_perfectly(tiny_vit, tiny_images):
    hook = "blocks.1.hook_resid_post"
    saes = {hook: _lossless_sae(16, hook)}
    labels = tiny_vit(tiny_images).argmax(-1)
    results = evaluate_saes(tiny_vit, saes, tiny_images, labels)
    row = results[hook]
    # Known answers up to float32 rounding of the reconstruction (measured: 1 - EV 8e-10, KL
    # 2e-12, 1 - ce_loss_score 1.6e-5 as ce_sae - ce_clean ~1.5e-6 is over ce_zero - ce_clean
    # ~0.09); each tolerance is >= 50x that.
    assert row["explained_variance"] == pytest.approx(1.0, abs=1e-4)
    assert row["cossim"] == pytest.approx(1.0, abs=1e-5)
    assert row["l0"] <= 16
    assert row["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6)
    assert row["kl_div_score"] == pytest.approx(1.0, abs=1e-4)
    assert row["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    assert row["top1_accuracy"] == results["clean"]["top1_accuracy"] == 1.0
    assert "| blocks.1.hook_resid_post |" in format_table(results)


def test_reported_replacement_accuracy_and_kl_are_the_replacement_models(
    tiny_vit, tiny_saes, tiny_images
):
    labels = torch.tensor([0, 1, 2, 3])
    results = evaluate_saes(tiny_vit, tiny_saes, tiny_images, labels)
    with torch.no_grad():
        clean = tiny_vit(tiny_images)
        with rrm_plugin.splice_saes(tiny_vit, tiny_saes, keep_error=False):
            replaced = tiny_vit(tiny_images)
    acc = (replaced.argmax(-1) == labels).double().mean().item()
    # The same logits (one batch of 4 both ways) and a float64 KL both ways: only float64
    # rounding separates them (a float32 KL of ~1e-3 would carry ~1e-5 of rounding).
    kl = torch.nn.functional.kl_div(replaced.double().log_softmax(-1),
                                    clean.double().log_softmax(-1),
                                    log_target=True, reduction="batchmean").item()
    assert results["all"]["top1_accuracy"] == pytest.approx(acc)
    assert results["all"]["kl_div_with_sae"] == pytest.approx(kl, rel=1e-12)
    assert results["all"]["kl_div_with_sae"] > 0


def test_reconstruction_metrics_known_answer():
    hook = "h"
    sae = new_topk_sae(d_in=4, d_sae=8, k=1, hook_name=hook, model_name="m")
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    metrics = reconstruction_metrics(x, sae)
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    # The same float32 per-token values, summed in float64 both ways (in another order, or for
    # the variance another algebra): only float64 rounding, ~1e-15, separates them.
    x64, x_hat64 = x.double(), x_hat.double()
    assert metrics["l0"] == pytest.approx(float((z > 0).sum(-1).double().mean()))
    # SAELens: squared error summed over d_in, averaged over tokens (not over every element).
    assert metrics["mse"] == pytest.approx(float((x64 - x_hat64).pow(2).sum(-1).mean()),
                                           rel=1e-12)
    dead = 100 * float(((z > 0).sum(0) == 0).double().mean())
    assert metrics["dead_features_pct"] == pytest.approx(dead)
    residual = (x64 - x_hat64).pow(2).sum()
    total = (x64 - x64.mean(0)).pow(2).sum()
    assert metrics["explained_variance"] == pytest.approx(float(1 - residual / total),
                                                          rel=1e-12)
    cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).double().mean()
    assert metrics["cossim"] == pytest.approx(float(cos), rel=1e-12)


def test_batched_evaluation_is_exact_over_the_whole_set(tiny_vit, tiny_saes):
    images = torch.rand(7, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    whole = evaluate_saes(tiny_vit, tiny_saes, images, labels, batch_size=64)
    batched = evaluate_saes(tiny_vit, tiny_saes, images, labels, batch_size=3)
    assert whole.keys() == batched.keys()
    # The runs differ only in the float32 forward passes' batch shape (3 vs 7 images), which can
    # change logits in their last bits (BLAS picks kernels by shape: 2.2e-8 on logits of ~0.1
    # here); the metrics are then float64 over the whole set. That noise reaches the KLs and CEs
    # at ~1e-7 relative, and the scores, ratios over small differences (kl_zero ~2e-3,
    # ce_zero - ce_clean ~5e-3), at <= 2e-6 relative (kl_div_score 4.4e-8 absolute); rel=1e-5,
    # abs=1e-6 leaves >= 10x. Float32 KLs were off by 1e-5 relative, kl_div_score by 4.6e-4.
    for name, row in whole.items():
        for metric, value in row.items():
            assert batched[name][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, metric)
    # Without labels the model's own predictions stand in: clean accuracy is 1 by definition.
    assert evaluate_saes(tiny_vit, tiny_saes, images, None)["clean"]["top1_accuracy"] == 1.0


def test_class_token_saes_are_measured_and_ablated_on_the_class_token(
    tiny_vit, tiny_saes, tiny_images
):
    hook = "blocks.1.hook_resid_post"
    sae = tiny_saes[hook]
    sae.cfg.metadata.seqpos_slice = (0, 1)
    results = evaluate_saes(tiny_vit, {hook: sae}, tiny_images, None)
    _, cache = tiny_vit.run_with_cache(tiny_images)
    expected = reconstruction_metrics(cache[hook][:, 0], sae)
    # The same class-token activations through the same float64 sums: only float64 rounding.
    for name, value in expected.items():
        assert results[hook][name] == pytest.approx(value, rel=1e-6, abs=1e-9)

    # Zero ablation of the class token only.
    def zero_cls(act, hook):
        act = act.clone()
        act[:, 0] = 0
        return act

    with torch.no_grad():
        ablated = tiny_vit.run_with_hooks(tiny_images, fwd_hooks=[(hook, zero_cls)])
        clean = tiny_vit(tiny_images)
    # The same logits (one batch of 4 both ways), a float64 KL both ways.
    kl = torch.nn.functional.kl_div(ablated.double().log_softmax(-1),
                                    clean.double().log_softmax(-1),
                                    log_target=True, reduction="batchmean")
    assert results[hook]["kl_div_with_ablation"] == pytest.approx(float(kl), rel=1e-12)


def test_reconstruction_metrics_follow_sae_lens_evals():
    from sae_lens.evals import ExplainedVarianceCalculator

    sae = new_topk_sae(d_in=6, d_sae=12, k=2, hook_name="h", model_name="m", seed=1)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    x64, x_hat64 = x.double(), x_hat.double()
    calculator = ExplainedVarianceCalculator()
    # Fed float64, SAELens sums in float64 as this library does (fed float32 it sums each
    # batch in float32, ~1e-7 relative off): the two differ by float64 rounding only.
    calculator.add_batch(sae_output=x_hat64, hidden_acts=x64)
    metrics = reconstruction_metrics(x, sae)
    assert metrics["explained_variance"] == pytest.approx(calculator.compute(), rel=1e-12)
    # sae_lens.evals.get_sparsity_and_variance_metrics: mse = mean over tokens of the summed
    # squared residual (its training loss's convention).
    assert metrics["mse"] == pytest.approx(float((x64 - x_hat64).pow(2).sum(-1).mean()),
                                           rel=1e-12)


def test_downstream_metrics_known_answers():
    from sae_lens.evals import _kl as sae_lens_kl

    # Float64 logits: float32 logs of these probabilities would put up to ~1e-6 relative on
    # the KLs below, at pytest.approx's default tolerance.
    clean = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]], dtype=torch.float64))
    spliced = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.5, 0.25]], dtype=torch.float64))
    ablated = torch.log(torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]], dtype=torch.float64))
    labels = torch.tensor([0, 1])
    m = downstream_metrics(clean=clean, spliced=spliced, ablated=ablated, labels=labels)
    ln2 = math.log(2)
    # KL(clean || spliced): image 0 .5 ln 2 + .25 ln(1/2) = .25 ln 2, image 1 0; mean .125 ln 2.
    assert m["kl_div_with_sae"] == pytest.approx(0.125 * ln2)
    # KL(clean || ablated): image 0 .25 ln 2 (by symmetry of the swap), image 1 .25 ln 2.
    assert m["kl_div_with_ablation"] == pytest.approx(0.25 * ln2)
    assert m["kl_div_with_sae"] == pytest.approx(float(sae_lens_kl(clean, spliced).mean()))
    assert m["kl_div_with_ablation"] == pytest.approx(float(sae_lens_kl(clean, ablated).mean()))
    assert m["kl_div_score"] == pytest.approx(0.5)  # (.25 - .125) / .25
    # CE: clean -ln .5 both; spliced -ln .25, -ln .5; ablated -ln .25, -ln .25.
    assert m["ce_loss_without_sae"] == pytest.approx(ln2)
    assert m["ce_loss_with_sae"] == pytest.approx(1.5 * ln2)
    assert m["ce_loss_with_ablation"] == pytest.approx(2 * ln2)
    assert m["ce_loss_score"] == pytest.approx(0.5)  # (2 - 1.5) / (2 - 1)
    assert m["top1_accuracy"] == 0.5  # spliced argmax 1, 1 against labels 0, 1


def test_format_table_known_answer():
    results = {"blocks.0.hook_resid_post": {"explained_variance": 0.5, "mse": 1234.5678,
                                            "cossim": 0.25, "l0": 4.0, "dead_features_pct": 0.0,
                                            "top1_accuracy": 1.0, "kl_div_with_sae": 0.125,
                                            "kl_div_score": 0.75, "ce_loss_score": -2.0},
               "clean": {"top1_accuracy": 0.875}}
    assert format_table(results) == (
        "| hook | explained_variance | mse | cossim | l0 | dead_features_pct | top1_accuracy | "
        "kl_div_with_sae | kl_div_score | ce_loss_score |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        "| blocks.0.hook_resid_post | 0.5 | 1235 | 0.25 | 4 | 0 | 1 | 0.125 | 0.75 | -2 |\n"
        "| clean |  |  |  |  |  | 0.875 |  |  |  |")


def test_zero_ablation_zeroes_exactly_the_saes_positions():
    sae = new_topk_sae(d_in=3, d_sae=6, k=2, hook_name="blocks.0.hook_resid_post",
                       model_name="m")
    act = torch.arange(1.0, 2 * 4 * 3 + 1).reshape(2, 4, 3)
    assert torch.equal(_zero_ablation(sae)(act, None), torch.zeros(2, 4, 3))
    sae.cfg.metadata.seqpos_slice = (0, 1)  # class token only
    out = _zero_ablation(sae)(act, None)
    assert torch.equal(out[:, 0], torch.zeros(2, 3)) and torch.equal(out[:, 1:], act[:, 1:])
    assert act[0, 0, 0] == 1  # the input is left as it was
