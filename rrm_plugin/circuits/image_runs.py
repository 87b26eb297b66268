"""Many circuits of one image, run as the rows of batched forwards (the viewer's readouts).

Deleting a circuit is inserting its complement (every latent and error outside it kept, those in
it at baseline: `intervention_hooks`), so the insertion and deletion runs of all circuits are
rows of the same batches, each with its own masks. The image's clean errors are computed once
and given to the splice, which then runs each SAE once per forward instead of twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines, require_baselines
from rrm_plugin.circuits.circuit import Circuit, check_circuits, clean_errors, intervention_hooks
from rrm_plugin.errors import RRMUserError
from rrm_plugin.replacement.splice import splice_saes


class ImageRuns(NamedTuple):
    insertion: Float[Tensor, "circuits classes"]
    """Logits with each circuit kept and everything else at baseline."""
    deletion: Float[Tensor, "circuits classes"]
    """Logits with each circuit at baseline (NaN rows where its deletion was not asked for)."""


def _row_masks(
    circuits: Sequence[Circuit], n_tokens: int, deleted: Tensor
) -> tuple[list[Tensor], Tensor]:
    """Insertion masks of the circuits, then of the complements of the `deleted` ones."""
    latents = []
    for k in range(len(circuits[0].hook_names)):
        # Feature circuits hold one [d_sae] mask for every position: broadcast, not copied.
        masks = torch.stack([c.latents[k] if c.latents[k].ndim == 2 else c.latents[k][None]
                             for c in circuits])
        masks = masks.expand(len(circuits), n_tokens, masks.shape[-1])
        latents.append(torch.cat([masks, ~masks[deleted]]))
    errors = torch.stack([c.errors for c in circuits])
    return latents, torch.cat([errors, ~errors[deleted]])


@torch.no_grad()
def run_circuits_on_image(
    model: nn.Module,
    saes: Mapping[str, SAE],
    image: Float[Tensor, "c h w"],
    circuits: Sequence[Circuit],
    *,
    baselines: Baselines,
    batch_size: int = 32,
    deletion: Sequence[bool] | None = None,
    errors: Mapping[str, Float[Tensor, "1 pos d_model"]] | None = None,
) -> ImageRuns:
    """Insertion and deletion logits of every circuit on one image, `2 * len(circuits)` rows
    run `batch_size` at a time; the same numbers as `run_circuits` on each circuit alone (up to
    the summation order of batched matrix products).

    Args:
        deletion: Per circuit, whether to run its deletion too (default: all); a row not run is
            NaN in `ImageRuns.deletion` (e.g. the all-at-baseline run: the empty circuit's
            insertion, whose deletion is the clean model).
        errors: The image's clean SAE errors (`clean_errors`), when already computed.
    """
    if not circuits:
        raise RRMUserError("run_circuits_on_image needs at least one circuit")
    if image.ndim != 3:
        raise RRMUserError(f"run_circuits_on_image takes one image [c, h, w], got shape "
                           f"{list(image.shape)}")
    if batch_size < 1:
        raise RRMUserError(f"batch_size must be at least 1, got {batch_size}")
    deleted = torch.ones(len(circuits), dtype=torch.bool) if deletion is None else \
        torch.as_tensor(list(deletion), dtype=torch.bool)
    if deleted.shape != (len(circuits),):
        raise RRMUserError(f"deletion has {deleted.numel()} entries for {len(circuits)} circuits")
    used = check_circuits(saes, circuits)
    require_baselines(baselines, caller="run_circuits_on_image")
    baselines.check(used)
    if errors is None:
        errors = clean_errors(model, used, image[None])
    elif not set(used) <= set(errors):
        raise RRMUserError(f"errors cover {sorted(errors)}; the circuits need {list(used)}")
    errors = {h: errors[h] for h in used}
    n_tokens = next(iter(errors.values())).shape[1]
    latents, error_masks = _row_masks(circuits, n_tokens, deleted)
    rows = []
    for start in range(0, len(error_masks), batch_size):
        stop = min(start + batch_size, len(error_masks))
        size = stop - start
        true = {h: e.expand(size, *e.shape[1:]) for h, e in errors.items()}
        hooks = intervention_hooks(list(used), [m[start:stop] for m in latents],
                                   error_masks[start:stop], baselines=baselines, errors=true,
                                   mode="insertion")
        with splice_saes(model, used, keep_error=True, fixed_errors=true):
            rows.append(model.run_with_hooks(image[None].expand(size, *image.shape),
                                             fwd_hooks=hooks))
    logits = torch.cat(rows)
    deletions = torch.full_like(logits[:len(circuits)], float("nan"))
    deletions[deleted.to(logits.device)] = logits[len(circuits):]
    return ImageRuns(logits[:len(circuits)], deletions)
