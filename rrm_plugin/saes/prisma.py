"""ViT-Prisma's published CLIP SAEs as SAELens SAEs.

Each SAE is its own Hugging Face repo (`Prisma-Multimodal/<name>`) holding `config.json`
(ViT-Prisma's `VisionModelSAERunnerConfig` as JSON) and `weights.pt`, a state dict
`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`. Some repos also
hold a training checkpoint `n_images_*.pt` that pickles the config object; it is never read.
ViT-Prisma's forward:

    x_n = norm(x)        z = act((x_n - b_dec) W_enc + b_enc)        x_hat = denorm(z W_dec + b_dec)

with `act` = ReLU (`activation_fn_str="relu"`) or ReLU after the top k (`"topk"`), and `norm` from
`normalize_activations` (JSON null: none; absent: ViT-Prisma's default `"layer_norm"`). A config
without `activation_fn_str` is refused: ViT-Prisma's default is TopK (which then needs
`activation_fn_kwargs.k`) but it was ReLU when some SAEs were trained, so the file does not say
which forward it holds; state it with `cfg_overrides={"activation_fn_str": ...}` (and
`"activation_fn_kwargs": {"k": k}` for TopK). ViT-Prisma also changed its input normalisation while
its SAEs were trained; `cfg_overrides={"normalize_activations": ...}` switches it. That is
SAELens's `StandardSAE` / `TopKSAE` with `apply_b_dec_to_input=True` and the same normalisation.
SAEs trained on the class token only (`cls_token_only`) get SAELens's `seqpos_slice = (0, 1)`;
those trained on the patches only (`use_patches_only`) get `(1, None)`: the replacement mode then
reads and replaces only those positions.
"""

from __future__ import annotations

import json
from typing import Any

from torch import Tensor

from rrm_plugin.io import CorruptFileError
from rrm_plugin.saes.hub import (
    CheckpointNotFoundError,
    check_state,
    hub_snapshot,
    read_torch_checkpoint,
)

PRISMA_LOADER_NAME = "rrm_plugin_vit_prisma"
PRISMA_ORG = "Prisma-Multimodal"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
# ViT-Prisma's own default when a config omits the key.
PRISMA_DEFAULT_NORMALISATION = "layer_norm"
_NORMALISATIONS = ("none", "layer_norm", "constant_norm_rescale")
# ViT-Prisma config keys a user may state when the file leaves them out (see the module doc).
STATABLE_KEYS = ("activation_fn_str", "activation_fn_kwargs")


def prisma_repo(repo_id: str, folder_name: str) -> str:
    """The SAE's own repo: the release's `repo_id` is the organisation, the sae path the name."""
    return folder_name if "/" in folder_name else f"{repo_id}/{folder_name}"


def _required(cfg: dict[str, Any], key: str, where: str) -> Any:
    if key not in cfg:
        raise CorruptFileError(f"{where}: ViT-Prisma SAE config has no {key!r}")
    return cfg[key]


def prisma_normalisation(cfg: dict[str, Any], where: str) -> str:
    if "normalize_activations" not in cfg:
        return PRISMA_DEFAULT_NORMALISATION
    mode = cfg["normalize_activations"]
    mode = "none" if mode is None else mode
    if mode not in _NORMALISATIONS:
        raise CorruptFileError(
            f"{where}: normalize_activations={mode!r} is not one of {_NORMALISATIONS}")
    return mode


def prisma_seqpos_slice(cfg: dict[str, Any], where: str) -> tuple[int | None, ...]:
    cls_only, patches_only = bool(cfg.get("cls_token_only")), bool(cfg.get("use_patches_only"))
    if cls_only and patches_only:
        raise CorruptFileError(f"{where}: both cls_token_only and use_patches_only are set")
    if cls_only:
        return (0, 1)
    return (1, None) if patches_only else (None,)


def sae_lens_config_from_prisma(cfg: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A flat SAELens config dict (pre-6.0 keys, as SAELens's own external loaders return)."""
    d_in = int(_required(cfg, "d_in", where))
    expansion = _required(cfg, "expansion_factor", where)
    d_sae = int(d_in * expansion)
    if "d_sae" in cfg and cfg["d_sae"] is not None and int(cfg["d_sae"]) != d_sae:
        raise CorruptFileError(f"{where}: d_sae={cfg['d_sae']} but d_in x expansion_factor = "
                               f"{d_in} x {expansion} = {d_sae}")
    architecture = cfg.get("architecture", "standard")
    if architecture != "standard":
        raise CorruptFileError(f"{where}: ViT-Prisma architecture {architecture!r} is not "
                               "supported (only 'standard' ReLU and TopK SAEs)")
    if "activation_fn_str" not in cfg:
        raise CorruptFileError(
            f"{where}: the config has no activation_fn_str, so it does not say whether this is a "
            "ReLU or a TopK SAE (ViT-Prisma's default is 'topk', which then needs "
            "activation_fn_kwargs.k; older ViT-Prisma versions defaulted to 'relu'). State it: "
            "cfg_overrides={'activation_fn_str': 'relu'} or {'activation_fn_str': 'topk', "
            "'activation_fn_kwargs': {'k': K}} (e.g. load_saes(..., cfg_overrides=...))")
    activation = cfg["activation_fn_str"]
    out: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
                           "apply_b_dec_to_input": True,
                           "normalize_activations": prisma_normalisation(cfg, where),
                           "reshape_activations": "none"}
    if activation == "relu":
        out["architecture"] = "standard"
    elif activation == "topk":
        k = (cfg.get("activation_fn_kwargs") or {}).get("k")
        if not isinstance(k, int) or not 0 < k <= d_sae:
            raise CorruptFileError(f"{where}: TopK SAE needs activation_fn_kwargs.k in "
                                   f"1..{d_sae}, got {k!r}")
        out |= {"architecture": "topk", "k": k, "rescale_acts_by_decoder_norm": False}
    else:
        raise CorruptFileError(f"{where}: activation_fn_str={activation!r} is not supported "
                               "(need 'relu' or 'topk')")
    layer = int(_required(cfg, "hook_point_layer", where))
    subtype = cfg.get("layer_subtype", "hook_resid_post")
    out |= {"model_name": cfg.get("model_name"), "hook_name": f"blocks.{layer}.{subtype}",
            "hook_head_index": None, "seqpos_slice": prisma_seqpos_slice(cfg, where)}
    return out


def apply_stated_keys(cfg: dict[str, Any], stated: dict[str, Any], *, where: str
                      ) -> dict[str, Any]:
    """`cfg` with the keys the user `stated` filled in; a stated key the file contradicts is an
    error (the file's own value is never silently replaced; null or `{}` says nothing)."""
    out = dict(cfg)
    for key, value in stated.items():
        if cfg.get(key) not in (None, {}) and cfg[key] != value:
            raise CorruptFileError(f"{where}: {key}={cfg[key]!r} in the file, but "
                                   f"{value!r} was stated; remove the override")
        out[key] = value
    return out


def _read_config(repo: str, *, force_download: bool, stated: dict[str, Any]) -> dict[str, Any]:
    folder = hub_snapshot(repo, [CONFIG_FILE], force_download=force_download)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(f"Hugging Face repo {repo!r} has no {CONFIG_FILE}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise CorruptFileError(f"{path} holds a {type(cfg).__name__}, expected an object")
    cfg = apply_stated_keys(cfg, stated, where=str(path))
    return sae_lens_config_from_prisma(cfg, where=str(path))


def read_prisma_sae_config(
    repo_id: str,
    folder_name: str,
    device: str | None = None,
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAELens config getter: reads the SAE repo's `config.json` (not the weights).

    `cfg_overrides` may state the ViT-Prisma keys in `STATABLE_KEYS` the file leaves out; the
    other keys override the converted (SAELens) config.
    """
    overrides = dict(cfg_overrides or {})
    stated = {key: overrides.pop(key) for key in STATABLE_KEYS if key in overrides}
    cfg = _read_config(prisma_repo(repo_id, folder_name), force_download=force_download,
                       stated=stated)
    if "d_in" in overrides and int(overrides.pop("d_in")) != cfg["d_in"]:
        raise CorruptFileError(
            f"{prisma_repo(repo_id, folder_name)}: config d_in={cfg['d_in']} does not match the "
            "release's model width")
    cfg.update(overrides)
    cfg["device"] = device or "cpu"
    return cfg


def convert_prisma_state(state: dict[str, Tensor], *, d_in: int, d_sae: int, where: str
                         ) -> dict[str, Tensor]:
    """ViT-Prisma's SAE tensors, checked; SAELens uses the same names and layout."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # ViT-Prisma's {"cfg", "state_dict"} save format
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in),
                "b_dec": (d_in,)}
    return check_state(state, expected, where=where)


def load_prisma_sae(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor], None]:
    """SAELens loader: `repo_id` is the organisation, `folder_name` the SAE's repo name."""
    cfg = read_prisma_sae_config(repo_id, folder_name, device, force_download, cfg_overrides)
    repo = prisma_repo(repo_id, folder_name)
    folder = hub_snapshot(repo, [CONFIG_FILE, WEIGHTS_FILE], force_download=force_download)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"Hugging Face repo {repo!r} (snapshot {folder}) has no {WEIGHTS_FILE}")
    weights = convert_prisma_state(read_torch_checkpoint(path), d_in=cfg["d_in"],
                                   d_sae=cfg["d_sae"], where=str(path))
    return cfg, {name: t.to(device) for name, t in weights.items()}, None
