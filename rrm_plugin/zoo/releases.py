"""Registry of SAE releases: shipped ones and published ones on the Hugging Face hub.

`register_releases()` (also `rrm_plugin.register_releases()`) registers all of them with SAELens,
after which `SAE.from_pretrained(release, "blocks.{l}.hook_resid_post")` works for each; hub
releases download (or read from the local cache) only the layer asked for. Importing this module
changes nothing in SAELens; only that call does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sae_lens.constants import SAE_CFG_FILENAME
from sae_lens.loading.pretrained_saes_directory import (
    PretrainedSAELookup,
    get_pretrained_saes_directory,
)

from rrm_plugin.errors import RRMUserError, UnknownNameError
from rrm_plugin.io import SHIPPED_DIR as WEIGHTS_DIR
from rrm_plugin.metrics.sae_sanity import check_explained_variance
from rrm_plugin.replacement.splice import check_sae_for_hook
from rrm_plugin.saes.authors import (
    AUTHORS_LOADER_NAME,
    authors_folder,
    load_authors_sae,
    read_authors_sae_config,
)
from rrm_plugin.saes.prisma import (
    PRISMA_LOADER_NAME,
    PRISMA_ORG,
    load_prisma_sae,
    read_prisma_sae_config,
)
from rrm_plugin.saes.registry import load_saes as load_registered_saes
from rrm_plugin.saes.registry import register_loader, register_sae_release
from rrm_plugin.tables import Table
from rrm_plugin.zoo.models import model_name_of


@dataclass(frozen=True)
class SAEReleaseSpec:
    """An SAE release shipped inside the package.

    Args:
        release: Name for `SAE.from_pretrained(release, sae_id)`.
        model_name: The embedded model the SAEs were trained on.
        directory: Folder holding one SAELens-format sub-folder per sae_id.
    """

    release: str
    model_name: str
    directory: Path


SAE_RELEASES: dict[str, SAEReleaseSpec] = {
    "rrm-digits-vit": SAEReleaseSpec(
        release="rrm-digits-vit",
        model_name="digits-vit",
        directory=WEIGHTS_DIR / "rrm-digits-vit",
    ),
    "rrm-digits-vit-spurious": SAEReleaseSpec(
        release="rrm-digits-vit-spurious",
        model_name="digits-vit-spurious",
        directory=WEIGHTS_DIR / "rrm-digits-vit-spurious",
    ),
    "rrm-digits-vit-stroke": SAEReleaseSpec(
        release="rrm-digits-vit-stroke",
        model_name="digits-vit-stroke",
        directory=WEIGHTS_DIR / "rrm-digits-vit-stroke",
    ),
}


@dataclass(frozen=True)
class HubLayer:
    """One SAE of a hub release.

    Args:
        hook_name: Host hook point (the sae_id).
        path: Where it lives in the repo (what the loader is given as `folder_name`).
        d_sae: Number of latents.
        k: Latents kept per token (TopK), or None for a ReLU SAE.
        explained_variance: The explained variance (a fraction) the release documents for this
            SAE, or None where it documents none.
    """

    hook_name: str
    path: str
    d_sae: int
    k: int | None
    explained_variance: float | None = None


@dataclass(frozen=True)
class HubSAEReleaseSpec:
    """A published SAE release read from the Hugging Face hub.

    Args:
        release: Name for `SAE.from_pretrained`.
        model_name: Name of the model (`load_model`) the SAEs attach to.
        repo_id: Hugging Face repo.
        loader: Key of the SAELens loader registry that reads one layer.
        layers: The SAEs, in layer order.
        d_in: Width of the hooked stream.
        source: One line on where the SAEs come from.
        config_overrides: Added to every SAE's config (the loader's `cfg_overrides`).
        explained_variance_source: Where the layers' documented explained variance comes from
            ("" where none is documented).
    """

    release: str
    model_name: str
    repo_id: str
    loader: str
    layers: tuple[HubLayer, ...]
    d_in: int = 768
    source: str = ""
    config_overrides: dict = field(default_factory=dict)
    explained_variance_source: str = ""


# (k, expansion R) per block output 0..10, from the authors' `load_default_sae_configs`.
AUTHORS_SIZES: dict[str, list[tuple[int, float]]] = {
    "vit": [(4, .25), (32, .5), (64, 1), (96, 2), (96, 2), (128, 2), (128, 4), (160, 4), (160, 4),
            (160, 4), (128, 2)],
    "clip_vit": [(64, .5), (64, .5), (96, 1), (96, 2), (128, 2), (128, 2), (128, 2), (128, 2),
                 (160, 2), (160, 2), (160, 2)],
    "dinov2": [(4, .25), (16, .25), (32, .5), (32, 2), (64, 2), (96, 2), (128, 2), (128, 2),
               (128, 2), (160, 2), (160, 2)],
}


def authors_release(
    release: str, *, model_name: str, repo_id: str, sizes: str
) -> HubSAEReleaseSpec:
    layers = tuple(
        HubLayer(hook_name=f"blocks.{layer}.hook_resid_post",
                 path=authors_folder(k=k, expansion=r, layer=layer), d_sae=int(r * 768), k=k)
        for layer, (k, r) in enumerate(AUTHORS_SIZES[sizes]))
    return HubSAEReleaseSpec(
        release=release, model_name=model_name, repo_id=repo_id, loader=AUTHORS_LOADER_NAME,
        layers=layers, source=f"RRM authors (hf: {repo_id})")


# ViT-Prisma's CLIP ViT-B/32 (LAION DataComp-XL) SAE series, one hub repo per layer (x64: d_sae
# 49152). The vanilla series' layer 2 was published at a stronger L1 coefficient than the others.
PRISMA_VANILLA_L1 = {layer: "1e-05" for layer in range(12)} | {2: "5e-05"}


def prisma_vanilla_repo(layer: int) -> str:
    return (f"sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-{layer}-hook_resid_post-l1-"
            f"{PRISMA_VANILLA_L1[layer]}")


def prisma_topk_cls_repo(layer: int) -> str:
    return f"sae-top_k-64-cls_only-layer_{layer}-hook_resid_post"


# The "% Explained var." column of ViT-Prisma's published SAE performance table (its repository's
# docs/sae_table.md: "Vanilla SAEs (All Patches)" resid_post rows, "Top K SAEs (CLS only, k =
# 64)" rows), layers 0..11, as fractions. The RRM authors document none per SAE.
PRISMA_TABLE = "ViT-Prisma's SAE performance table (docs/sae_table.md, '% Explained var.')"
PRISMA_VANILLA_EV = (.986, .983, .906, .981, .980, .981, .982, .982, .982, .982, .984, .984)
PRISMA_TOPK_CLS_EV = (.90, .96, .96, .95, .94, .93, .92, .90, .87, .85, .86, .84)


def prisma_release(release: str, *, repo: Callable[[int], str], k: int | None, what: str,
                   repo_pattern: str, explained_variance: tuple[float, ...]
                   ) -> HubSAEReleaseSpec:
    layers = tuple(HubLayer(hook_name=f"blocks.{layer}.hook_resid_post", path=repo(layer),
                            d_sae=64 * 768, k=k, explained_variance=explained_variance[layer])
                   for layer in range(12))
    return HubSAEReleaseSpec(
        release=release, model_name="clip-vit-b32-datacomp", repo_id=PRISMA_ORG,
        loader=PRISMA_LOADER_NAME, layers=layers,
        source=f"ViT-Prisma, {what} (hf: {PRISMA_ORG}/{repo_pattern})",
        explained_variance_source=PRISMA_TABLE)


HUB_SAE_RELEASES: dict[str, HubSAEReleaseSpec] = {
    spec.release: spec for spec in (
        authors_release("rrm-vit-b16-imagenet", model_name="vit-b16-imagenet",
                        repo_id="timespt/topksae-vit-base-patch16-224", sizes="vit"),
        authors_release("rrm-clip-vit-b16", model_name="clip-vit-b16",
                        repo_id="timespt/topksae-clip-vit-base-patch16", sizes="clip_vit"),
        authors_release("rrm-dinov2-vitb14-reg", model_name="dinov2-vitb14-reg",
                        repo_id="timespt/topksae-dinov2-vitb14-reg-lc", sizes="dinov2"),
        prisma_release("prisma-clip-b32-vanilla-x64", repo=prisma_vanilla_repo, k=None,
                       what="ReLU + L1, all tokens", repo_pattern=(
                           "sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-{l}-hook_resid_post"
                           "-l1-1e-05 (layer 2: l1-5e-05)"),
                       explained_variance=PRISMA_VANILLA_EV),
        prisma_release("prisma-clip-b32-topk64-cls", repo=prisma_topk_cls_repo, k=64,
                       what="TopK k=64, class token only",
                       repo_pattern="sae-top_k-64-cls_only-layer_{l}-hook_resid_post",
                       explained_variance=PRISMA_TOPK_CLS_EV),
    )
}

# SAELens loader name -> (loader, config getter) of the hub releases.
HUB_LOADERS = {
    AUTHORS_LOADER_NAME: (load_authors_sae, read_authors_sae_config),
    PRISMA_LOADER_NAME: (load_prisma_sae, read_prisma_sae_config),
}


def register_hub_release(spec: HubSAEReleaseSpec) -> None:
    """Make `SAE.from_pretrained(spec.release, hook_name)` load through `spec.loader`."""
    loader, config_getter = HUB_LOADERS[spec.loader]
    register_loader(spec.loader, loader=loader, config_getter=config_getter)
    get_pretrained_saes_directory()[spec.release] = PretrainedSAELookup(
        release=spec.release,
        repo_id=spec.repo_id,
        model=spec.model_name,
        conversion_func=spec.loader,
        saes_map={layer.hook_name: layer.path for layer in spec.layers},
        # SAELens's own field for the explained variance a release documents (read by
        # rrm_plugin.metrics.sae_sanity).
        expected_var_explained={layer.hook_name: layer.explained_variance for layer in spec.layers
                                if layer.explained_variance is not None},
        expected_l0={},
        neuronpedia_id={},
        norm_scaling_factor={},
        config_overrides={"d_in": spec.d_in, "model_name": spec.model_name,
                          **spec.config_overrides},
    )


_REGISTERED: list[str] = []


def register_releases() -> list[str]:
    """Add every release of this package to SAELens's pretrained-SAE directory; their names.

    After it, `SAE.from_pretrained(release, sae_id)` finds the shipped releases (read offline from
    the package) and the hub releases (downloaded per layer). Idempotent: the first call
    registers, later ones return the same names.
    """
    if not _REGISTERED:
        _REGISTERED.extend(register_embedded_releases())
    return list(_REGISTERED)


RELEASE_ATTR = "rrm_release"  # set on each SAE `load_saes` returns: the release it came from


def load_saes(
    release: str,
    *,
    sae_ids: list[str] | None = None,
    device: str | None = None,
    model=None,
    cfg_overrides: dict | None = None,
    images=None,
) -> dict:
    """All SAEs of a release as `{hook_name: SAE}`: a named one (shipped or on the hub, registered
    here first) or one registered from a folder (`register_sae_release`).

    With `model`: a local release's recorded provenance is checked (`ProvenanceError` on other
    model weights), every SAE must fit its hook point of the model, and `device` defaults to the
    model's (else the CPU). Each SAE records the release (`release_of`), which `trace` and
    `resolve_baselines` use to find the release's baselines. `cfg_overrides` as in
    `rrm_plugin.saes.registry.load_saes`. With `images` (preprocessed model inputs; needs
    `model`), a cheap check runs a few of them through the model and warns
    (`ExplainedVarianceWarning`) about SAEs that explain far less variance than their release
    documents, which points at a wrong input normalisation.
    """
    if images is not None and model is None:
        raise RRMUserError("load_saes(images=...) checks the SAEs on the model's activations: "
                           "pass model= too")
    register_releases()
    if device is None:
        device = "cpu" if model is None else str(next(model.parameters()).device)
    saes = load_registered_saes(release, sae_ids=sae_ids, device=device, model=model,
                                cfg_overrides=cfg_overrides)
    if model is not None:
        check_saes_fit(model, saes, release=release,
                       model_name=model_name_of(model) or model.cfg.model_name)
    for sae in saes.values():
        setattr(sae, RELEASE_ATTR, release)
    if images is not None:
        check_explained_variance(model, saes, images, release=release)
    return saes


def release_of(saes: Mapping) -> str | None:
    """The release every SAE of `saes` was loaded from by `load_saes`, else None."""
    found = {getattr(sae, RELEASE_ATTR, None) for sae in saes.values()}
    return found.pop() if len(found) == 1 else None


def check_saes_fit(model, saes: Mapping, *, release: str, model_name: str) -> None:
    """Every SAE must fit its hook point (the replacement model's check), named for the user."""
    for hook, sae in saes.items():
        try:
            check_sae_for_hook(model, hook, sae)
        except (KeyError, ValueError) as err:
            raise RRMUserError(f"SAE release {release!r} does not fit model {model_name!r}: "
                               f"{err.args[0]}") from err


def register_embedded_releases() -> list[str]:
    """Register every shipped release whose weights are present and every hub release."""
    registered = []
    for spec in SAE_RELEASES.values():
        if spec.directory.is_dir() and any(spec.directory.iterdir()):
            register_sae_release(spec.release, spec.directory, model_name=spec.model_name)
            registered.append(spec.release)
    for hub_spec in HUB_SAE_RELEASES.values():
        register_hub_release(hub_spec)
        registered.append(hub_spec.release)
    return registered


def release_model_name(release: str) -> str:
    """The model a known release's SAEs attach to."""
    if release in SAE_RELEASES:
        return SAE_RELEASES[release].model_name
    if release in HUB_SAE_RELEASES:
        return HUB_SAE_RELEASES[release].model_name
    raise UnknownNameError(f"unknown SAE release {release!r}; known releases: {release_names()}")


def release_names() -> list[str]:
    return [*SAE_RELEASES, *HUB_SAE_RELEASES]


def list_releases() -> list[dict]:
    """One row per release: release, model, hooks, d_sae, k, source."""
    import json

    rows = []
    for spec in SAE_RELEASES.values():
        hooks, d_sae, k = [], [], []
        for folder in sorted(spec.directory.iterdir()):
            cfg_path = folder / SAE_CFG_FILENAME
            if cfg_path.is_file():
                cfg = json.loads(cfg_path.read_text())
                hooks.append(cfg["metadata"]["hook_name"])
                d_sae.append(cfg["d_sae"])
                k.append(cfg.get("k"))
        rows.append({"release": spec.release, "model": spec.model_name, "hooks": hooks,
                     "d_sae": d_sae, "k": k, "source": "embedded (trained by rrm-plugin)"})
    for hub in HUB_SAE_RELEASES.values():
        rows.append({"release": hub.release, "model": hub.model_name,
                     "hooks": [layer.hook_name for layer in hub.layers],
                     "d_sae": [layer.d_sae for layer in hub.layers],
                     "k": [layer.k for layer in hub.layers], "source": hub.source})
    return rows


def release_table(rows: list[dict]) -> Table:
    """The rows as a `Table`; a column whose layers agree shows one value."""
    def compact(values: list) -> str:
        return str(values[0]) if len(set(map(str, values))) == 1 else ",".join(map(str, values))

    cells = []
    for r in rows:
        hooks = r["hooks"]
        span = f"{hooks[0]} .. {hooks[-1]} ({len(hooks)})" if len(hooks) > 1 else hooks[0]
        cells.append([r["release"], r["model"], span, compact(r["d_sae"]), compact(r["k"]),
                      r["source"]])
    return Table(rows, columns=["release", "model", "hooks", "d_sae", "k", "source"],
                 cells=cells)

