"""The RRM paper's backbones (and two CLIP ViT-B/32s) by name, through their upstream loaders.

Weights come from the Hugging Face hub through timm / transformers / open_clip (`HF_HUB_OFFLINE`,
`HF_HOME`, `HF_HUB_CACHE` are honoured) and, for DINOv2's linear head, through torch hub's
checkpoint cache. Each model is converted to an `ExtendedViT` (a vit-prisma `HookedViT`) that
computes the upstream logits; each entry knows its preprocessing and its class names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rrm_plugin.hosts.vit import ExtendedViT
from rrm_plugin.io import read_tensors, write_tensors
from rrm_plugin.saes.hub import CheckpointNotFoundError, hub_snapshot

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a model input.

    Args:
        size: Resize target: an int resizes the shorter side (then `crop` centre-crops), a pair
            `(h, w)` resizes to exactly that size.
        crop: Centre-crop side after resizing (None: no crop).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel std divided by.
        interpolation: `"bilinear"` or `"bicubic"` (torchvision, antialiased).
        exact_size: Refuse images whose size is not `size` instead of resizing them (models
            trained on small renders, where resizing a photo gives a meaningless input).
        crop_rounding: How centre-crop offsets are rounded: `"floor"` (CLIPProcessor) or
            `"round"` (torchvision's `CenterCrop`, used by open_clip).
        background: RGB in [0, 1] that transparent pixels are composited over (white, as
            transformers' `convert_to_rgb` does for these models' processors).
    """

    size: int | tuple[int, int]
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    exact_size: bool = False
    crop_rounding: str = "floor"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(
                f"crop_rounding must be 'floor' or 'round', got {self.crop_rounding!r}")
        if len(self.background) != 3 or not all(0 <= c <= 1 for c in self.background):
            raise ValueError(f"background must be RGB in [0, 1], got {self.background!r}")

    def to_json_dict(self) -> dict:
        return {"size": self.size, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation,
                "crop_rounding": self.crop_rounding, "background": list(self.background)}

    def to_display(self, images: Tensor) -> Tensor:
        """Undo the normalisation: model inputs back to [0, 1] RGB."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype)[:, None, None]
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype)[:, None, None]
        return (images * std + mean).clamp(0, 1)

    @property
    def input_range(self) -> tuple[float, float]:
        """Range of a preprocessed pixel (from [0, 1] inputs)."""
        lo = min((0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        hi = max((1 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        return lo, hi


# The RRM authors feed timm's ViT and DINOv2 with Resize((224, 224)) and mean = std = 0.5.
AUTHORS_PREPROCESSING = Preprocessing(size=(224, 224), crop=None, mean=(0.5,) * 3, std=(0.5,) * 3)
# ... and CLIP with CLIPProcessor: shorter side 224 (bicubic), centre crop 224, CLIP mean/std.
CLIP_PREPROCESSING = Preprocessing(size=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD,
                                   interpolation="bicubic")
# open_clip's validation transform (and ViT-Prisma's for its CLIP SAEs): the same, but cropped
# with torchvision's CenterCrop.
OPEN_CLIP_PREPROCESSING = Preprocessing(size=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD,
                                        interpolation="bicubic", crop_rounding="round")
DATACOMP_B32_REPO = "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"


@dataclass(frozen=True)
class HubModelSpec:
    """A model loaded from upstream weights.

    Args:
        name: Name for `load_model`.
        source: Upstream identifiers (for listings and error messages).
        build: Loads the upstream model(s) and converts them; `device` is where it ends up.
        preprocessing: How image files are turned into inputs.
        class_names: The classes, in logit order.
        description: One line for listings.
    """

    name: str
    source: str
    build: Callable[[], ExtendedViT]
    preprocessing: Preprocessing
    class_names: Callable[[], list[str]]
    description: str


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions, from timm's bundled metadata."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def openai_imagenet_prompts() -> tuple[list[str], list[Callable[[str], str]]]:
    """OpenAI's ImageNet zero-shot class names and 80 prompt templates (shipped by open_clip)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def cache_dir() -> Path:
    """rrm-plugin's user cache (`RRM_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/rrm_plugin`)."""
    if "RRM_PLUGIN_CACHE" in os.environ:
        return Path(os.environ["RRM_PLUGIN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rrm_plugin"


# --- vit-b16-imagenet --------------------------------------------------------------------------

TIMM_VIT_B16 = "vit_base_patch16_224"


def build_vit_b16_imagenet() -> ExtendedViT:
    import timm

    from rrm_plugin.hosts.convert import convert_timm_vit

    try:
        upstream = timm.create_model(TIMM_VIT_B16, pretrained=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointNotFoundError(
            f"timm could not load {TIMM_VIT_B16} (pretrained, Hugging Face repo "
            f"timm/vit_base_patch16_224.augreg2_in21k_ft_in1k): {err}") from err
    return convert_timm_vit(upstream.eval(), model_name="vit-b16-imagenet")


# --- CLIP (Hugging Face transformers) with a zero-shot head ----------------------------------

@torch.no_grad()
def zero_shot_class_embeddings(
    clip, tokenizer, class_names: list[str], templates: list[Callable[[str], str]],
    *, batch_size: int = 256, progress: bool = True,
) -> Tensor:
    """One embedding per class: mean over templates of the text features, then L2-normalised.

    As the RRM authors build CLIP's head: the per-template features are averaged unnormalised.
    """
    from tqdm.auto import tqdm

    out = []
    for name in tqdm(class_names, desc="CLIP zero-shot head", disable=not progress):
        prompts = [t(name) for t in templates]
        feats = []
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start:start + batch_size], padding=True,
                               return_tensors="pt")
            feats.append(_text_features(clip, tokens))
        mean = torch.cat(feats).mean(0)
        out.append(mean / mean.norm())
    return torch.stack(out)


def _text_features(clip, tokens) -> Tensor:
    feats = clip.get_text_features(input_ids=tokens["input_ids"],
                                   attention_mask=tokens["attention_mask"])
    return feats if isinstance(feats, Tensor) else feats.pooler_output


def _state_fingerprint(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
        digest.update(str(tuple(tensor.shape)).encode())
    return digest.hexdigest()[:16]


def cached_class_embeddings(
    *, key: str, n_classes: int, d_proj: int, build: Callable[[], Tensor]
) -> Tensor:
    """Zero-shot class embeddings `[n_classes, d_proj]`: read from the cache, else built and cached.

    `key` names the text tower (repo and a fingerprint of its weights), so a changed tower is
    never served a stale head.
    """
    path = cache_dir() / "zero_shot" / f"{key}.safetensors"
    if path.is_file():
        return read_tensors(path, expected_shapes={"class_embeddings": (n_classes, d_proj)})[
            "class_embeddings"]
    embeddings = build()
    write_tensors(path, {"class_embeddings": embeddings})
    return embeddings


def cached_zero_shot_head(clip, tokenizer, *, repo_id: str, progress: bool = True) -> Tensor:
    """The zero-shot class embeddings of a HF `CLIPModel` (the RRM authors' recipe), cached."""
    names, templates = openai_imagenet_prompts()
    return cached_class_embeddings(
        key=f"{repo_id.replace('/', '--')}-{_state_fingerprint(clip.text_model)}",
        n_classes=len(names), d_proj=clip.text_projection.out_features,
        build=lambda: zero_shot_class_embeddings(clip, tokenizer, names, templates,
                                                 progress=progress))


def build_hf_clip(repo_id: str, model_name: str) -> ExtendedViT:
    from transformers import CLIPModel, CLIPTokenizer

    from rrm_plugin.hosts.convert import convert_hf_clip

    try:
        clip = CLIPModel.from_pretrained(repo_id).eval()
        tokenizer = CLIPTokenizer.from_pretrained(repo_id)
    except OSError as err:
        raise CheckpointNotFoundError(
            f"transformers could not load CLIP {repo_id!r} (model and tokenizer): {err}") from err
    embeddings = cached_zero_shot_head(clip, tokenizer, repo_id=repo_id)
    return convert_hf_clip(clip, embeddings, logit_scale=1.0, model_name=model_name)


# --- open_clip (LAION / DataComp checkpoints on the HF hub) ---------------------------------

OPEN_CLIP_CONFIG = "open_clip_config.json"
# open_clip's own preference: safetensors first, then the pickle-free-loadable .bin.
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def open_clip_snapshot(repo_id: str) -> Path:
    """Local folder with an open_clip hub repo's config and one weights file (cache first)."""
    for weights in OPEN_CLIP_WEIGHTS:
        try:
            folder = hub_snapshot(repo_id, [OPEN_CLIP_CONFIG, weights])
        except CheckpointNotFoundError:
            if weights == OPEN_CLIP_WEIGHTS[-1]:
                raise
            continue
        if (folder / OPEN_CLIP_CONFIG).is_file() and (folder / weights).is_file():
            return folder
    raise CheckpointNotFoundError(
        f"Hugging Face repo {repo_id!r} has no {OPEN_CLIP_CONFIG} with one of {OPEN_CLIP_WEIGHTS} "
        "(neither cached nor downloadable)")


def open_clip_zero_shot_head(clip, tokenizer, *, repo_id: str) -> Tensor:
    """open_clip's own ImageNet zero-shot classifier (OpenAI names x 80 templates), cached.

    `open_clip.build_zero_shot_classifier` averages the normalised per-template text features,
    as open_clip's ImageNet evaluation of these checkpoints does.
    """
    from open_clip import build_zero_shot_classifier

    names, templates = openai_imagenet_prompts()
    build = lambda: build_zero_shot_classifier(  # noqa: E731
        clip, tokenizer, names, templates, num_classes_per_batch=10, use_tqdm=True).T.contiguous()
    return cached_class_embeddings(
        key=f"open_clip-{repo_id.replace('/', '--')}-{_state_fingerprint(clip)}",
        n_classes=len(names), d_proj=clip.visual.output_dim, build=build)


def build_open_clip(repo_id: str, model_name: str) -> ExtendedViT:
    """An open_clip hub checkpoint's vision tower with its zero-shot head, via open_clip."""
    import open_clip

    from rrm_plugin.hosts.convert import convert_open_clip

    folder = open_clip_snapshot(repo_id)
    # open_clip's `local-dir:` schema reads the config and the weights (torch.load with
    # weights_only=True) from the snapshot folder, as `hf-hub:` would after downloading.
    clip = open_clip.create_model(f"local-dir:{folder}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    embeddings = open_clip_zero_shot_head(clip, tokenizer, repo_id=repo_id)
    return convert_open_clip(clip, embeddings, logit_scale=1.0, model_name=model_name)


# --- DINOv2 ViT-B/14 with registers and its linear head ---------------------------------------

DINOV2_REPO = "facebook/dinov2-with-registers-base"
DINOV2_HEAD_URL = ("https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"
                   "dinov2_vitb14_reg4_linear_head.pth")


def dinov2_head_path() -> Path:
    """Where torch hub caches DINOv2's linear head (`$TORCH_HOME/hub/checkpoints/...`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / DINOV2_HEAD_URL.rsplit("/", 1)[-1]


def load_dinov2_head(*, d_model: int = 768, n_classes: int = 1000) -> dict[str, Tensor]:
    """DINOv2's ImageNet linear head on [CLS, mean patch] (weight [n_classes, 2 d_model])."""
    from huggingface_hub import constants

    from rrm_plugin.saes.hub import check_state, read_torch_checkpoint

    path = dinov2_head_path()
    if not path.is_file():
        if constants.HF_HUB_OFFLINE:
            raise CheckpointNotFoundError(
                f"DINOv2 linear head not cached at {path} and HF_HUB_OFFLINE is set; "
                f"download {DINOV2_HEAD_URL} there (torch hub's cache)")
        try:
            torch.hub.download_url_to_file(DINOV2_HEAD_URL, str(path))
        except OSError as err:
            raise CheckpointNotFoundError(
                f"could not download DINOv2's linear head {DINOV2_HEAD_URL} to {path}: {err}"
            ) from err
    state = read_torch_checkpoint(path)
    expected = {"weight": (n_classes, 2 * d_model), "bias": (n_classes,)}
    return check_state(state, expected, where=str(path))


def build_dinov2_vitb14_reg() -> ExtendedViT:
    from transformers import Dinov2WithRegistersModel

    from rrm_plugin.hosts.convert import convert_hf_dinov2

    try:
        backbone = Dinov2WithRegistersModel.from_pretrained(DINOV2_REPO).eval()
    except OSError as err:
        raise CheckpointNotFoundError(
            f"transformers could not load {DINOV2_REPO!r}: {err}") from err
    head = load_dinov2_head(d_model=backbone.config.hidden_size)
    return convert_hf_dinov2(backbone, head["weight"], head["bias"], image_size=224,
                             model_name="dinov2-vitb14-reg")


def openai_clip_spec(name: str, repo_id: str, size: str) -> HubModelSpec:
    """An OpenAI CLIP vision tower with the zero-shot ImageNet head, preprocessed as CLIP."""
    return HubModelSpec(
        name=name,
        source=f"hf: {repo_id} + zero-shot ImageNet head (80 templates)",
        build=lambda: build_hf_clip(repo_id, name),
        preprocessing=CLIP_PREPROCESSING,
        class_names=lambda: openai_imagenet_prompts()[0],
        description=f"OpenAI CLIP ViT-{size} vision tower, zero-shot ImageNet head (cosine logits)",
    )


HUB_MODELS: dict[str, HubModelSpec] = {
    "vit-b16-imagenet": HubModelSpec(
        name="vit-b16-imagenet",
        source="timm vit_base_patch16_224 (hf: timm/vit_base_patch16_224.augreg2_in21k_ft_in1k)",
        build=build_vit_b16_imagenet,
        preprocessing=AUTHORS_PREPROCESSING,
        class_names=imagenet_class_names,
        description="ViT-B/16, ImageNet-1k head (the RRM paper's 'ViT')",
    ),
    "clip-vit-b16": openai_clip_spec("clip-vit-b16", "openai/clip-vit-base-patch16", "B/16"),
    "dinov2-vitb14-reg": HubModelSpec(
        name="dinov2-vitb14-reg",
        source=f"hf: {DINOV2_REPO} + torch hub dinov2_vitb14_reg4_linear_head.pth",
        build=build_dinov2_vitb14_reg,
        preprocessing=AUTHORS_PREPROCESSING,
        class_names=imagenet_class_names,
        description="DINOv2 ViT-B/14 with 4 registers, linear ImageNet head on [CLS, mean patch]",
    ),
    "clip-vit-b32": openai_clip_spec("clip-vit-b32", "openai/clip-vit-base-patch32", "B/32"),
    "clip-vit-b32-datacomp": HubModelSpec(
        name="clip-vit-b32-datacomp",
        source=f"open_clip hf-hub:{DATACOMP_B32_REPO} + zero-shot ImageNet head (80 templates)",
        build=lambda: build_open_clip(DATACOMP_B32_REPO, "clip-vit-b32-datacomp"),
        preprocessing=OPEN_CLIP_PREPROCESSING,
        class_names=lambda: openai_imagenet_prompts()[0],
        description="LAION DataComp-XL CLIP ViT-B/32 vision tower (ViT-Prisma's SAEs), "
                    "zero-shot ImageNet head (cosine logits)",
    ),
}
