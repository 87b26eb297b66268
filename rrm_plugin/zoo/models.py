"""Registry of embedded models and their on-disk format (config.json + model.safetensors)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from vit_prisma.configs.HookedViTConfig import HookedViTConfig
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.data.digits import DIGITS_DATA, DigitsCanvasConfig
from rrm_plugin.errors import MissingFileError, RRMUserError, UnknownNameError
from rrm_plugin.hosts.vit import ExtendedViT, ExtendedViTConfig
from rrm_plugin.io import CorruptFileError, read_json, read_tensors, write_json, write_tensors
from rrm_plugin.provenance import FINGERPRINT_ATTR, remember_fingerprint
from rrm_plugin.tables import Table
from rrm_plugin.zoo.hub_models import HUB_MODELS

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_NAME_ATTR = "rrm_model_name"  # the name (or folder) a model was loaded by
CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    """An embedded model.

    Args:
        name: Name used by `load_model`.
        directory: Folder holding `config.json` and `model.safetensors`.
        data: How its images are drawn (the data helper needs it).
        description: One line for listings.
        benchmark: Where its training and test images come from: `"digits"`,
            `"digits-spurious"` (the canvas with a class-coloured marker) or
            `"digits-spurious-stroke"` (the digit's stroke hue names the class).
    """

    name: str
    directory: Path
    data: DigitsCanvasConfig
    description: str
    benchmark: str = "digits"


MODELS: dict[str, ModelSpec] = {
    "digits-vit": ModelSpec(
        name="digits-vit",
        directory=WEIGHTS_DIR / "digits-vit",
        data=DIGITS_DATA,
        description="4-layer ViT on coloured, translated scikit-learn digits (24x24, patch 4)",
    ),
    "digits-vit-spurious": ModelSpec(
        name="digits-vit-spurious",
        directory=WEIGHTS_DIR / "digits-vit-spurious",
        data=DIGITS_DATA,
        description="digits-vit trained where a corner marker's colour names the class on 95% of "
                    "images (digits-spurious benchmark; biased)",
        benchmark="digits-spurious",
    ),
    "digits-vit-balanced": ModelSpec(
        name="digits-vit-balanced",
        directory=WEIGHTS_DIR / "digits-vit-balanced",
        data=DIGITS_DATA,
        description="digits-vit trained on group-balanced digits-spurious data (the debiasing "
                    "upper reference)",
        benchmark="digits-spurious",
    ),
    "digits-vit-stroke": ModelSpec(
        name="digits-vit-stroke",
        directory=WEIGHTS_DIR / "digits-vit-stroke",
        data=DIGITS_DATA,
        description="digits-vit trained where the digit's stroke hue names the class on 95% of "
                    "images (digits-spurious-stroke benchmark; biased)",
        benchmark="digits-spurious-stroke",
    ),
    "digits-vit-stroke-balanced": ModelSpec(
        name="digits-vit-stroke-balanced",
        directory=WEIGHTS_DIR / "digits-vit-stroke-balanced",
        data=DIGITS_DATA,
        description="digits-vit trained on group-balanced digits-spurious-stroke data (the "
                    "variant's upper reference)",
        benchmark="digits-spurious-stroke",
    ),
}


def digits_vit_config(name: str = "digits-vit") -> HookedViTConfig:
    """Architecture of the embedded `digits-vit` (and of its `digits-spurious` variants)."""
    return HookedViTConfig(
        model_name=name,
        n_layers=4,
        d_model=64,
        d_head=16,
        n_heads=4,
        d_mlp=256,
        activation_name="gelu",
        eps=1e-5,
        patch_size=DIGITS_DATA.patch_size,
        image_size=DIGITS_DATA.canvas_size,
        n_channels=3,
        n_classes=10,
        classification_type="cls",
        return_type="class_logits",
        normalization_type="LN",
        use_wandb=False,
    )


_SAVED_CONFIG_FIELDS = (
    "model_name", "n_layers", "d_model", "d_head", "n_heads", "d_mlp", "activation_name", "eps",
    "patch_size", "image_size", "n_channels", "n_classes", "classification_type", "return_type",
    "normalization_type", "layer_norm_pre", "n_registers", "head_type", "projection_dim",
)


def config_to_dict(cfg: HookedViTConfig) -> dict:
    return {name: getattr(cfg, name) for name in _SAVED_CONFIG_FIELDS if hasattr(cfg, name)}


def config_from_dict(data: dict) -> ExtendedViTConfig:
    known = {f.name for f in dataclasses.fields(ExtendedViTConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CorruptFileError(f"model config has unknown fields {unknown}")
    try:
        return ExtendedViTConfig(**data, use_wandb=False)
    except (TypeError, ValueError) as err:
        raise CorruptFileError(f"invalid model config: {err}") from err


def save_model(model: HookedViT, directory: Path) -> Path:
    """Write `config.json` and `model.safetensors` (each atomically)."""
    directory = Path(directory)
    write_tensors(directory / WEIGHTS_FILENAME, model.state_dict())
    write_json(directory / CONFIG_FILENAME, config_to_dict(model.cfg))
    return directory


def load_model_from_directory(directory: Path, *, device: str = "cpu") -> HookedViT:
    """Load a saved HookedViT, verifying every tensor's name and shape; returns it in eval mode."""
    directory = Path(directory)
    cfg = config_from_dict(read_json(directory / CONFIG_FILENAME))
    with torch.device("meta"):
        skeleton = ExtendedViT(cfg)
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    state = read_tensors(directory / WEIGHTS_FILENAME, expected_shapes=expected)
    model = ExtendedViT(cfg)
    model.load_state_dict(state)
    remember_fingerprint(model, state)  # what SAEs and baselines record (docs/method.md 1)
    remember_model_name(model, str(directory))
    return model.to(device).eval()


def remember_model_name(model: nn.Module, name: str) -> nn.Module:
    """Record the name (or folder) `model` was loaded by: its preprocessing, held-out images,
    class names and SAE releases are looked up by it (`rrm_plugin.load_images`, `trace`)."""
    setattr(model, MODEL_NAME_ATTR, name)
    return model


def model_name_of(model: nn.Module) -> str | None:
    """The name `load_model` (or the folder `load_model_from_directory`) recorded, else None."""
    return getattr(model, MODEL_NAME_ATTR, None)


def model_names() -> list[str]:
    """Every model `load_model` knows: embedded ones, then those loaded from upstream weights."""
    return [*MODELS, *HUB_MODELS]


def list_models() -> list[dict[str, str]]:
    """One row per model (name, source, preprocessing, description); printable as a table."""
    rows = [{"model": s.name, "source": f"embedded ({s.directory.name})",
             "preprocessing": "none: [0, 1] pixels, 24x24", "description": s.description}
            for s in MODELS.values()]
    for spec in HUB_MODELS.values():
        p = spec.preprocessing
        size = "x".join(map(str, p.size)) if isinstance(p.size, tuple) else f"short side {p.size}"
        crop = f", crop {p.crop}" if p.crop else ""
        rows.append({"model": spec.name, "source": spec.source,
                     "preprocessing": f"resize {size} {p.interpolation}{crop}, mean {p.mean[0]:.3g}"
                                      f"..., std {p.std[0]:.3g}...",
                     "description": spec.description})
    return rows


def model_table(rows: list[dict[str, str]]) -> Table:
    """The rows as a `Table` (markdown `repr`, HTML in a notebook)."""
    columns = ["model", "source", "preprocessing", "description"]
    return Table(rows, columns=columns, cells=[[r[c] for c in columns] for r in rows])


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def load_model(
    name: str = "digits-vit", *, device: str | torch.device = "cpu", dtype: str | None = None
) -> HookedViT:
    """A model by name (a ViT-Prisma `HookedViT` in eval mode); see `list_models()`.

    Embedded models load from the package; the others through their upstream loaders (timm,
    transformers, torch hub), which honour `HF_HUB_OFFLINE` and the local caches. The name is
    recorded on the model (`model_name_of`), so `load_images(..., model=model)` and `trace` find
    its preprocessing, held-out images and class names.
    """
    if dtype is not None and dtype not in DTYPES:
        raise RRMUserError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if name in HUB_MODELS:
        from rrm_plugin.zoo.hub_cache import check_offline_cache

        check_offline_cache(name)  # one line naming what is missing, before the upstream imports
        model = HUB_MODELS[name].build()
    elif name in MODELS:
        spec = MODELS[name]
        if not (spec.directory / WEIGHTS_FILENAME).is_file():
            raise MissingFileError(
                f"weights of {name!r} are missing at {spec.directory}; regenerate them with "
                f"`rrm train-model --out DIR` and load it with `--model DIR`"
            )
        model = load_model_from_directory(spec.directory)
    else:
        raise UnknownNameError(f"unknown model {name!r}; available models: {model_names()}")
    remember_model_name(model, name)
    return to_device(model, device=device, dtype=dtype)


def to_device(model: HookedViT, *, device: str | torch.device = "cpu", dtype: str | None = None
              ) -> HookedViT:
    """Move a HookedViT (weights and its config's dtype, which its LayerNorms read)."""
    if dtype is not None:
        if getattr(model, FINGERPRINT_ATTR, None) is None:
            remember_fingerprint(model)  # of the weights as loaded, not as cast
        model.cfg.dtype = DTYPES[dtype]
        model = model.to(DTYPES[dtype])
    model.cfg.device = str(device)
    return model.to(device).eval()
