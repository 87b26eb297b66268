"""Which token positions an SAE reads and replaces, from SAELens's `seqpos_slice` metadata.

SAELens records the positions an SAE was trained on as `cfg.metadata.seqpos_slice`, the arguments
of a Python `slice` over the token axis (`(None,)`: every token). ViT-Prisma's class-token SAEs
have `(0, 1)`. At the other positions the replacement mode leaves the stream to the error term.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool
from sae_lens import SAE
from torch import Tensor

from rrm_plugin.errors import RRMUserError


def sae_positions(sae: SAE) -> slice:
    """The token slice an SAE covers (`slice(None)`: all tokens)."""
    seqpos = sae.cfg.metadata.seqpos_slice
    if seqpos is None:
        return slice(None)
    if (not isinstance(seqpos, (tuple, list)) or not 1 <= len(seqpos) <= 3
            or not all(v is None or isinstance(v, int) for v in seqpos)):
        raise RRMUserError(f"SAE at {sae.cfg.metadata.hook_name!r} has seqpos_slice={seqpos!r}; "
                           "expected a tuple of 1 to 3 ints or None, e.g. (0, 1)")
    positions = slice(*seqpos)
    if positions.step is not None and positions.step <= 0:
        raise RRMUserError(f"SAE at {sae.cfg.metadata.hook_name!r}: seqpos_slice step must be > 0")
    return positions


def covers_every_position(sae: SAE) -> bool:
    return sae_positions(sae) == slice(None)


def position_mask(sae: SAE, n_tokens: int, *, device: torch.device | str = "cpu"
                  ) -> Bool[Tensor, " pos"]:
    """True at the token positions the SAE covers."""
    mask = torch.zeros(n_tokens, dtype=torch.bool, device=device)
    mask[sae_positions(sae)] = True
    return mask
