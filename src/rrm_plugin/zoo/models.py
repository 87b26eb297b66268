"""Registry of embedded models and their on-disk format (config.json + model.safetensors)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from vit_prisma.configs.HookedViTConfig import HookedViTConfig
from vit_prisma.models.base_vit import HookedViT

from rrm_plugin.data.digits import DigitsCanvasConfig
from rrm_plugin.hosts.prisma import build_hooked_vit
from rrm_plugin.io import CorruptFileError, read_json, read_tensors, write_json, write_tensors

WEIGHTS_DIR = Path(__file__).parent / "weights"
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
    """

    name: str
    directory: Path
    data: DigitsCanvasConfig
    description: str


DIGITS_DATA = DigitsCanvasConfig(canvas_size=24, scale=2, patch_size=4)

MODELS: dict[str, ModelSpec] = {
    "digits-vit": ModelSpec(
        name="digits-vit",
        directory=WEIGHTS_DIR / "digits-vit",
        data=DIGITS_DATA,
        description="4-layer ViT on coloured, translated scikit-learn digits (24x24, patch 4)",
    ),
}


def digits_vit_config() -> HookedViTConfig:
    """Architecture of the embedded `digits-vit`."""
    return HookedViTConfig(
        model_name="digits-vit",
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
    "normalization_type", "layer_norm_pre",
)


def config_to_dict(cfg: HookedViTConfig) -> dict:
    return {name: getattr(cfg, name) for name in _SAVED_CONFIG_FIELDS}


def config_from_dict(data: dict) -> HookedViTConfig:
    known = {f.name for f in dataclasses.fields(HookedViTConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CorruptFileError(f"model config has unknown fields {unknown}")
    return HookedViTConfig(**data, use_wandb=False)


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
        skeleton = HookedViT(cfg)
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    state = read_tensors(directory / WEIGHTS_FILENAME, expected_shapes=expected)
    model = build_hooked_vit(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()


def load_model(name: str = "digits-vit", *, device: str = "cpu") -> HookedViT:
    """Load an embedded model by name (a ViT-Prisma `HookedViT` in eval mode)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available models: {sorted(MODELS)}")
    spec = MODELS[name]
    if not (spec.directory / WEIGHTS_FILENAME).is_file():
        raise FileNotFoundError(
            f"weights of {name!r} are missing at {spec.directory}; regenerate them with "
            f"`rrm train-model --out {spec.directory}`"
        )
    return load_model_from_directory(spec.directory, device=device)
