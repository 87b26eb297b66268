"""Attribution targets: a class logit or the adjusted logit `logit_y - mean_c logit_c`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from rrm_plugin.errors import RRMUserError

Metric = Literal["logit", "adjusted_logit"]
METRICS: tuple[str, ...] = ("logit", "adjusted_logit")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise RRMUserError(f"unknown target metric {metric!r}; expected one of {list(METRICS)}")


def integer_tensor(values, *, what: str) -> Int[Tensor, "..."]:
    """`values` (an int, a sequence of ints or an integer tensor) as a long tensor; floats,
    strings and bools are refused rather than truncated or cast."""
    if isinstance(values, Tensor):
        if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
            raise TypeError(f"{what} must be integers (class indices), got a {values.dtype} "
                            "tensor")
        return values.long()
    items = [values] if not isinstance(values, (list, tuple, range)) else list(values)
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
    if bad:
        raise TypeError(f"{what} must be integers (class indices), got {bad[0]!r} "
                        f"({type(bad[0]).__name__})")
    return torch.tensor([int(v) for v in items], dtype=torch.long)


def resolve_classes(
    logits: Float[Tensor, "batch classes"],
    classes: int | Sequence[int] | Tensor | None,
) -> Int[Tensor, " batch"]:
    """Target class per image: the predicted class when `classes` is None."""
    n_images, n_classes = logits.shape
    if classes is None:
        return logits.argmax(-1)
    resolved = integer_tensor(classes, what="classes").to(logits.device).reshape(-1)
    if resolved.numel() == 1:
        resolved = resolved.expand(n_images)
    if resolved.numel() != n_images:
        raise RRMUserError(f"got {resolved.numel()} target classes for {n_images} images")
    bad = resolved[(resolved < 0) | (resolved >= n_classes)]
    if bad.numel():
        raise RRMUserError(
            f"unknown target class {bad[0].item()}; the model has classes 0..{n_classes - 1}"
        )
    return resolved.clone()


def metric_values(
    logits: Float[Tensor, "batch classes"],
    classes: Int[Tensor, " batch"],
    metric: str,
) -> Float[Tensor, " batch"]:
    """The attributed quantity per image (the authors subtract the mean over all classes)."""
    check_metric(metric)
    return readout(logits, classes)[metric]


def readout(
    logits: Float[Tensor, "batch classes"], classes: Int[Tensor, " batch"]
) -> dict[str, Tensor]:
    """Per image: the class's logit, adjusted logit (logit minus the mean over all classes) and
    probability, and the predicted class."""
    chosen = logits.gather(-1, classes[:, None])[:, 0]
    return {
        "logit": chosen,
        "adjusted_logit": chosen - logits.mean(-1),
        "probability": logits.softmax(-1).gather(-1, classes[:, None])[:, 0],
        "predicted_class": logits.argmax(-1),
    }


def image_readout(logits: Float[Tensor, " classes"], cls: int) -> dict[str, float]:
    """`readout` of one image's logits as plain numbers."""
    values = readout(logits[None], torch.tensor([cls], device=logits.device))
    return {"logit": float(values["logit"][0]),
            "adjusted_logit": float(values["adjusted_logit"][0]),
            "probability": float(values["probability"][0]),
            "predicted_class": int(values["predicted_class"][0])}
