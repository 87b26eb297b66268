import pytest
import torch

from rrm_plugin.lens.features import feature_class_scores, feature_lens
from rrm_plugin.saes.training import new_topk_sae


def _sae(d_in: int, rows: torch.Tensor, hook: str = "blocks.0.hook_resid_post"):
    sae = new_topk_sae(d_in=d_in, d_sae=len(rows), k=1, hook_name=hook, model_name="hand")
    with torch.no_grad():
        sae.W_dec.copy_(rows)
    return sae


def test_feature_directions_read_out_their_class(hand):
    # Head = identity, so feature i pointing along e_c should rank class c first.
    rows = torch.eye(hand.d)[[3, 0, 5]] * torch.tensor([[2.0], [0.5], [1.0]])
    lens = feature_lens(hand.model, {"blocks.0.hook_resid_post": _sae(hand.d, rows)}, top_k=2)
    top = lens["blocks.0.hook_resid_post"].top_classes
    assert top[:, 0].tolist() == [3, 0, 5]


def test_feature_scores_by_hand(hand):
    model = hand.model
    with torch.no_grad():
        model.ln_final.w.copy_(torch.arange(1.0, hand.d + 1))
    rows = torch.tensor([[3.0, 4.0, 0, 0, 0, 0]])  # norm 5
    saes = {"blocks.1.hook_resid_post": _sae(hand.d, rows, hook="blocks.1.hook_resid_post")}
    plain = feature_class_scores(model, saes, fold_ln=False)["blocks.1.hook_resid_post"]
    torch.testing.assert_close(plain, torch.tensor([[0.6, 0.8, 0, 0, 0, 0]]))
    folded = feature_class_scores(model, saes)["blocks.1.hook_resid_post"]
    centred = torch.tensor([0.6, 0.8, 0, 0, 0, 0]) - 1.4 / 6
    torch.testing.assert_close(folded, (centred * torch.arange(1.0, 7))[None])


def test_folded_scores_are_the_logit_change_under_a_frozen_final_ln(tiny_vit, tiny_saes):
    # Adding eps * W_dec[i] to a residual, with the LN scale frozen, changes the logits by
    # eps / scale * score_i * |W_dec[i]|: the folded score is the direction of that change.
    with torch.no_grad():
        tiny_vit.ln_final.w.uniform_(0.5, 2.0)
        tiny_vit.ln_final.b.normal_()
    scores = feature_class_scores(tiny_vit, tiny_saes)
    hook = "blocks.1.hook_resid_post"
    w_dec = tiny_saes[hook].W_dec.detach()
    x = torch.randn(tiny_vit.cfg.d_model)
    ln = tiny_vit.ln_final
    centred = x - x.mean()
    scale = (centred.pow(2).mean() + ln.eps).sqrt()

    def frozen(v):
        return ((v - v.mean()) / scale * ln.w + ln.b) @ tiny_vit.head.W_H

    with torch.no_grad():
        change = frozen(x + w_dec[7]) - frozen(x)
        torch.testing.assert_close(change, scores[hook][7] * w_dec[7].norm() / scale)


def test_feature_lens_checks(hand, tiny_saes):
    expected = r"W_dec of shape \[32, 16\], expected \[d_sae, d_model=6\]"
    with pytest.raises(ValueError, match=expected):
        feature_lens(hand.model, tiny_saes)
    bad_hook = {"blocks.9.hook_resid_post": _sae(hand.d, torch.eye(hand.d))}
    with pytest.raises(ValueError, match="not a hook point"):
        feature_lens(hand.model, bad_hook)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 6\]"):
        feature_lens(hand.model, {}, top_k=7)


def test_top_k_may_list_every_class_and_defaults_to_three(hand):
    rows = torch.eye(hand.d)[[3, 0]]
    saes = {"blocks.0.hook_resid_post": _sae(hand.d, rows)}
    every = feature_lens(hand.model, saes, top_k=hand.d)["blocks.0.hook_resid_post"]
    assert sorted(every.top_classes[0].tolist()) == list(range(hand.d))
    assert every.top_scores[0].tolist() == sorted(every.scores[0].tolist(), reverse=True)
    default = feature_lens(hand.model, saes)["blocks.0.hook_resid_post"]
    assert default.top_classes.shape == (2, 3) and default.top_classes[:, 0].tolist() == [3, 0]
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 6\], got 0"):
        feature_lens(hand.model, saes, top_k=0)
