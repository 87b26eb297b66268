"""Seeded training of the embedded `digits-vit` (regenerates the shipped weights)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.data.digits import DigitsBatch, DigitsCanvasConfig, held_out_set, train_sampler
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.threads import torch_threads
from rrm_plugin.zoo.models import DIGITS_DATA, digits_vit_config, save_model


@dataclass(frozen=True)
class ModelTrainingConfig:
    """Recipe for `digits-vit`.

    Args:
        n_steps: Optimiser steps (fresh placement and colours each step).
        batch_size: Images per step.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay).
        warmup_steps: Linear warm-up length.
        weight_decay: AdamW weight decay.
        seed: Seed of initialisation and of the training stream.
        threads: torch CPU threads (fixed so that runs reproduce bit for bit).
    """

    n_steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    seed: int = 0
    threads: int = 2


@torch.no_grad()
def accuracy(model: HookedViT, data: DigitsCanvasConfig = DIGITS_DATA) -> float:
    batch = held_out_set(data)
    return float((model(batch.images).argmax(-1) == batch.labels).float().mean())


def train_digits_vit(
    cfg: ModelTrainingConfig = ModelTrainingConfig(), *, out: Path | None = None,
    progress: bool = True,
) -> tuple[HookedViT, float]:
    """Train `digits-vit`; saves it to `out` if given. Returns the model and held-out accuracy."""
    with torch_threads(cfg.threads):  # the held-out accuracy too, as when it was shipped
        model = train_vit(cfg, name="digits-vit",
                          sample=train_sampler(DIGITS_DATA, seed=cfg.seed), progress=progress)
        acc = accuracy(model)
    if out is not None:
        save_model(model, out)
    return model, acc


def lr_at(cfg: ModelTrainingConfig, step: int) -> float:
    """Learning rate of `step` (0-based): linear warm-up times cosine decay from `cfg.lr`."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.n_steps))


def lr_scheduler(cfg: ModelTrainingConfig, params: Iterable[Tensor]) -> LambdaLR:
    """AdamW under a `LambdaLR` that follows `lr_at` bit for bit.

    The optimiser's base rate is 1.0 and the schedule's factor is the whole rate `lr_at(step)`:
    factoring `cfg.lr` out (`cfg.lr * factor`) rounds differently at some steps, and the shipped
    weights were trained with exactly these floats. Step it after each optimiser step.
    """
    optimiser = torch.optim.AdamW(params, lr=1.0, weight_decay=cfg.weight_decay)
    return LambdaLR(optimiser, lambda step: lr_at(cfg, step))


def train_vit(
    cfg: ModelTrainingConfig, *, name: str, sample: Callable[[int], DigitsBatch],
    progress: bool = True, init: HookedViT | None = None,
) -> HookedViT:
    """The `digits-vit` architecture and recipe on any stream of labelled batches (eval mode);
    with `init`, fine-tunes a copy of its weights instead of a fresh initialisation."""
    with torch_threads(cfg.threads):
        model = build_hooked_vit(digits_vit_config(name), seed=cfg.seed)
        if init is not None:
            model.load_state_dict(init.state_dict())
        model.train()
        scheduler = lr_scheduler(cfg, model.parameters())
        optimiser = scheduler.optimizer
        bar = tqdm(range(cfg.n_steps), desc=f"train {name}", disable=not progress)
        for step in bar:
            batch = sample(cfg.batch_size)
            loss = F.cross_entropy(model(batch.images), batch.labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        return model.eval()
