"""Which images a faithfulness run uses: the correctly classified ones of the set, all of them,
a seeded subset (`n_images`) or the given indices (`image_indices`)."""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor, nn

from rrm_plugin.errors import RRMUserError
from rrm_plugin.runs.sharded import concat, map_batches


def correct_indices(
    model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 256
) -> Int[Tensor, " n"]:
    """Indices of the images the model classifies correctly, on the labels' device."""
    weight = next(model.parameters())

    @torch.no_grad()
    def batch(sl: slice) -> dict[str, Tensor]:
        x = images[sl].to(weight.device, weight.dtype)  # a batch at a time onto the model's device
        return {"correct": model(x).argmax(-1) == labels[sl].to(weight.device)}

    parts = map_batches(batch, n=len(images), batch_size=batch_size, name="correct",
                        progress=False)
    return torch.nonzero(concat(parts, "correct").to(labels.device))[:, 0]


def select_images(correct: Tensor, n_images: int | None, seed: int) -> Tensor:
    """All correctly classified images, or a seeded random subset of `n_images` of them."""
    if n_images is None or n_images >= len(correct):
        if n_images is not None and n_images > len(correct):
            raise RRMUserError(f"asked for {n_images} images but only {len(correct)} held-out "
                               "images are classified correctly")
        return correct
    if n_images < 1:
        raise RRMUserError(f"n_images must be at least 1, got {n_images}")
    generator = torch.Generator().manual_seed(seed)
    return correct[torch.randperm(len(correct), generator=generator)[:n_images]].sort().values


def chosen_images(correct: Int[Tensor, " n"], image_indices: tuple[int, ...]) -> Tensor:
    """The given images, each of which must be classified correctly."""
    wrong = sorted(set(image_indices) - set(correct.tolist()))
    if wrong:
        raise RRMUserError(f"image_indices {wrong} are not correctly classified images of the "
                           "set (or out of range); faithfulness uses correct images only")
    return torch.tensor(image_indices, dtype=torch.long, device=correct.device)
