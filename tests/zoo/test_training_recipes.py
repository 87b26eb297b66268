import torch

from rrm_plugin.saes.training import TopKTrainingConfig, train_topk_sae
from rrm_plugin.threads import torch_threads
from rrm_plugin.zoo.train_model import ModelTrainingConfig, train_digits_vit


def test_model_training_is_reproducible_bit_for_bit():
    cfg = ModelTrainingConfig(n_steps=3, batch_size=8, threads=1)
    a, _ = train_digits_vit(cfg, progress=False)
    b, _ = train_digits_vit(cfg, progress=False)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name
    c, _ = train_digits_vit(ModelTrainingConfig(n_steps=3, batch_size=8, threads=1, seed=1),
                            progress=False)
    assert not torch.equal(a.head.W_H, c.head.W_H)


def test_sae_training_is_reproducible_bit_for_bit():
    x = torch.randn(3000, 8, generator=torch.Generator().manual_seed(0))
    cfg = TopKTrainingConfig(d_sae=16, k=2, n_steps=10, batch_size=256)
    a, _ = train_topk_sae(x, cfg=cfg, hook_name="h", model_name="m", progress=False)
    b, _ = train_topk_sae(x, cfg=cfg, hook_name="h", model_name="m", progress=False)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name


def test_real_sae_recipe_is_reproducible_at_small_step_counts():
    from dataclasses import replace

    from rrm_plugin.zoo.recipes import DIGITS_SAE_CONFIGS, train_digits_saes

    configs = {h: replace(c, n_steps=3) for h, c in DIGITS_SAE_CONFIGS.items()}
    a = train_digits_saes(out=None, configs=configs, progress=False)
    b = train_digits_saes(out=None, configs=configs, progress=False)
    for hook in DIGITS_SAE_CONFIGS:
        for name, tensor in a[hook].state_dict().items():
            assert torch.equal(tensor, b[hook].state_dict()[name]), (hook, name)


def test_train_saes_options_reach_the_recipe(tmp_path, monkeypatch):
    """`--steps --lr --d-sae --k` used to be ignored unless `--images` was given."""
    import rrm_plugin.zoo.recipes as recipes
    from rrm_plugin.cli.main import main

    seen = {}

    def fake_recipe(*, out, model_dir, configs, n_baseline_images):
        seen.update(configs=configs, n_baseline_images=n_baseline_images)
        (out / "marker").write_text("")

    monkeypatch.setattr(recipes, "train_digits_saes", fake_recipe)
    argv = ["train-saes", "--steps", "7", "--lr", "0.01", "--k", "3", "--n-baseline-images", "5",
            "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    assert {(c.n_steps, c.lr, c.k) for c in seen["configs"].values()} == {(7, 0.01, 3)}
    assert [c.d_sae for c in seen["configs"].values()] == [128, 256, 256]  # recipe kept
    assert seen["n_baseline_images"] == 5
    assert main(["train-saes", "--out", str(tmp_path / "d")]) == 0  # defaults: the recipe
    assert {(c.n_steps, c.lr) for c in seen["configs"].values()} == {(2000, 1e-3)}


def test_spurious_recipe_keeps_digits_vits_lower_layers_and_reproduces():
    from dataclasses import replace

    import rrm_plugin
    from rrm_plugin.zoo.spurious import SPURIOUS_TRAINING, partly_pretrained, train_spurious_vit

    base = rrm_plugin.load_model("digits-vit").state_dict()
    init = partly_pretrained("digits-vit-spurious", seed=0).state_dict()
    for name, tensor in init.items():
        kept = not name.startswith(("blocks.2.", "blocks.3.", "ln_final.", "head."))
        assert torch.equal(tensor, base[name]) == kept, name
    cfg = replace(SPURIOUS_TRAINING, n_steps=2, batch_size=8)
    a = train_spurious_vit(cfg, progress=False).state_dict()
    b = train_spurious_vit(cfg, progress=False).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    balanced = train_spurious_vit(cfg, balanced=True, progress=False).state_dict()
    assert not torch.equal(a["head.W_H"], balanced["head.W_H"])  # another stream


def _old_hand_set_lr(cfg, step):
    # The formula the shipped weights were trained with, set by hand before each step (copied
    # from the code before LambdaLR, independent of `lr_at`).
    import math

    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.n_steps))


def test_lr_scheduler_follows_the_hand_set_schedule_bit_for_bit():
    from rrm_plugin.zoo.spurious import SPURIOUS_TRAINING
    from rrm_plugin.zoo.train_model import lr_scheduler

    for cfg in (ModelTrainingConfig(), SPURIOUS_TRAINING, ModelTrainingConfig(n_steps=7,
                                                                              warmup_steps=3)):
        scheduler = lr_scheduler(cfg, [torch.nn.Parameter(torch.zeros(1))])
        for step in range(cfg.n_steps):
            assert scheduler.optimizer.param_groups[0]["lr"] == _old_hand_set_lr(cfg, step), step
            scheduler.optimizer.step()
            scheduler.step()


def test_train_vit_equals_the_hand_set_training_loop():
    import torch.nn.functional as F

    from rrm_plugin.data.digits import train_sampler
    from rrm_plugin.hosts.prisma import build_hooked_vit
    from rrm_plugin.zoo.models import DIGITS_DATA, digits_vit_config
    from rrm_plugin.zoo.train_model import train_vit

    cfg = ModelTrainingConfig(n_steps=4, batch_size=8, warmup_steps=3, threads=1)
    new = train_vit(cfg, name="t", sample=train_sampler(DIGITS_DATA, seed=0), progress=False)
    # The loop as it was (lr written into the param groups by hand before each step).
    with torch_threads(cfg.threads):
        old = build_hooked_vit(digits_vit_config("t"), seed=cfg.seed).train()
        sample = train_sampler(DIGITS_DATA, seed=0)
        optimiser = torch.optim.AdamW(old.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        for step in range(cfg.n_steps):
            for group in optimiser.param_groups:
                group["lr"] = _old_hand_set_lr(cfg, step)
            batch = sample(cfg.batch_size)
            loss = F.cross_entropy(old(batch.images), batch.labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    for (name, a), b in zip(new.state_dict().items(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_training_recipes_leave_the_callers_thread_count_alone(monkeypatch):
    from dataclasses import replace

    from rrm_plugin.zoo import recipes
    from rrm_plugin.zoo.recipes import DIGITS_SAE_CONFIGS, train_digits_saes

    seen = []
    real = recipes.train_release_with_baselines
    monkeypatch.setattr(recipes, "train_release_with_baselines",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    with torch_threads(3):
        train_digits_vit(ModelTrainingConfig(n_steps=1, batch_size=4, threads=1), progress=False)
        assert torch.get_num_threads() == 3
        configs = {h: replace(c, n_steps=1) for h, c in DIGITS_SAE_CONFIGS.items()}
        train_digits_saes(out=None, configs=configs, progress=False)
        assert torch.get_num_threads() == 3
    assert seen == [2]  # the shipped SAE recipe's count, inside the recipe


def test_torch_threads_restores_also_on_exceptions():
    import pytest

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=">= 1"), torch_threads(0):
        pass
