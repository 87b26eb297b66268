import torch

from rrm_plugin.saes.training import TopKTrainingConfig, train_topk_sae
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
