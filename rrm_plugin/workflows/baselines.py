"""Which baselines a run uses, in the documented order (docs/method.md; `rrm trace --help`).

1. a baselines file given explicitly (`path=`, `--baselines`);
2. the user cache of the SAEs' release (what `rrm baselines` wrote last; a folder release: the
   file inside it);
3. the file shipped with a named release;
4. the per-position median over the input images (two or more);
5. zero (a single input image).

The release is the one `load_saes` recorded on the SAEs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from sae_lens import SAE
from torch import Tensor, nn

from rrm_plugin.attribution.baselines import Baselines, compute_baselines
from rrm_plugin.errors import RRMUserError
from rrm_plugin.zoo.baselines import cached_baselines_path, load_release_baselines
from rrm_plugin.zoo.models import model_name_of
from rrm_plugin.zoo.releases import SAE_RELEASES, release_of


class ResolvedBaselines(NamedTuple):
    """Baselines and one line on where they came from (printed by the CLI, kept in metadata).

    `warning` is set when they are not dataset baselines (zero, or the median of the run's own
    few inputs): the paper's protocol uses per-position medians over a dataset, and the line
    names the `rrm baselines` command that computes them for the release.
    """

    baselines: Baselines
    description: str
    warning: str | None = None


def not_dataset_warning(description: str, *, release: str | None, model: str | None) -> str:
    """The warning of baselines that are not a dataset's medians, with the command to fix it."""
    command = "rrm baselines"
    if model is not None:
        command += f" --model {model}"
    command += f" --release {release or 'RELEASE'} --images IMAGES..."
    return (f"baselines are {description}, not the paper's per-position medians over a dataset; "
            f"circuits and their insertion/deletion numbers depend on them. Compute them once "
            f"with `{command}` (later runs of this release then use them)")


def resolve_baselines(model: nn.Module, saes: Mapping[str, SAE], *,
                      images: Tensor | None = None, path: str | Path | None = None,
                      release: str | None = None) -> ResolvedBaselines:
    """The baselines of `saes` in the documented order (module doc), checked against the SAEs
    and the model and moved to the model's device.

    `images` [n, c, h, w]: the run's inputs, for steps 4 and 5. `release` overrides the release
    recorded on the SAEs.
    """
    release = release or release_of(saes)
    device = next(model.parameters()).device
    stand_in = False
    if path is not None:
        found, what = Baselines.load(Path(path)), f"file {path}"
    elif release is not None and cached_baselines_path(release).is_file():
        cached = cached_baselines_path(release)
        found, what = Baselines.load(cached), f"cached {cached}"
    elif release in SAE_RELEASES:
        found, what = load_release_baselines(release), f"shipped with {release}"
    elif images is None:
        raise RRMUserError(
            f"no baselines file for release {release!r} (none shipped or cached): give "
            "baselines= (a file from `rrm baselines`) or the images to take the median over")
    elif len(images) >= 2:
        stand_in = True
        found = compute_baselines(model, saes, images, progress=False)
        what = f"median over the {len(images)} input images"
    else:
        stand_in = True
        n_tokens = model(images[:1], stop_at_layer=0).shape[1]
        found, what = Baselines.zeros(saes, n_tokens=n_tokens), "zero (one input image)"
    found.check(saes, model=model)
    # Steps 4 and 5 are stand-ins; steps 1-3 are files a user or the release chose.
    warning = (not_dataset_warning(what, release=release, model=model_name_of(model))
               if stand_in else None)
    return ResolvedBaselines(found.to(device), what, warning)
