"""The check of a faithfulness run's image choice (`image_indices` / `n_images`), torch-free so
that `rrm faithfulness` refuses bad options before any heavy import and the library config
refuses the same inputs with the same words (only the settings' spelling differs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rrm_plugin.errors import RRMUserError


class Spelling(NamedTuple):
    """How the two settings are named to the reader of an error."""

    image_indices: str
    n_images: str


PYTHON = Spelling("image_indices", "n_images")
CLI = Spelling("--image-indices", "--n-images")


def check_image_indices(
    *, image_indices: Sequence[int] | None, n_images: int | None, spelling: Spelling = PYTHON
) -> tuple[int, ...] | None:
    """The indices sorted (None stays None), or a user error: given with `n_images`, empty,
    repeated or negative. Whether each index is a correctly classified image of the set is
    known only once the model has run (`image_selection.chosen_images`)."""
    if image_indices is None:
        return None
    name = spelling.image_indices
    if n_images is not None:
        raise RRMUserError(f"{name}: give {spelling.n_images} or {name}, not both")
    if not image_indices:
        raise RRMUserError(f"{name}: expected at least one index, got []")
    if min(image_indices) < 0 or len(set(image_indices)) < len(image_indices):
        raise RRMUserError(f"{name}: expected distinct indices >= 0, got {list(image_indices)}")
    return tuple(sorted(image_indices))
