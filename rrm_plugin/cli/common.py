"""Options shared by the commands: model, SAE release, images, baselines, device and dtype.

Only argparse here; what the options mean lives in `rrm_plugin.workflows`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_RELEASE = "rrm-digits-vit"
DTYPE_CHOICES = ("float32", "float64", "bfloat16", "float16")


def add_model_args(p: argparse.ArgumentParser, *, release: bool = True,
                   default_release: str = DEFAULT_RELEASE) -> None:
    p.add_argument("--model", default=None,
                   help="model name (`rrm list`) or a folder saved by `save_model`; default: "
                        "the model of --release")
    if release:
        p.add_argument("--release", default=default_release,
                       help=f"SAE release (`rrm list`) or a folder written by `rrm train-saes` "
                            f"(default {default_release})")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="model and SAE dtype (default: as loaded, float32)")


def add_images_arg(p: argparse.ArgumentParser, *, help_default: str) -> None:
    p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="image files or folders (PNG/JPEG; a folder of class folders gives "
                        f"labels), preprocessed as the model expects; default: {help_default}")


def add_baselines_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baselines", type=Path, default=None,
                   help="baselines file from `rrm baselines --out`; default: the release's "
                        "shipped or cached baselines, else the median over the images (zero "
                        "for a single image)")


def add_common_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
