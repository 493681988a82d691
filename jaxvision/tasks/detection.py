"""Detection: from images to torchvision-style detections."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from jaxvision.models.detection import transform
from jaxvision.registry import get_spec


def predict(model, variables, images: Sequence[np.ndarray], name: str | None = None,
            batch_size: int = 8) -> list[dict]:
    """What torchvision's detector returns in eval mode for ``images`` (HWC float32 in [0, 1],
    any sizes): per image numpy ``boxes`` (n, 4) xyxy in that image's pixels, ``scores`` (n,),
    ``labels`` (n,).  ``name`` picks the registered preprocessing (mean/std; SSD's fixed size)
    when the model does not carry it; sizes from ``model.min_size`` / ``max_size``."""
    spec = get_spec(name) if name else None
    mean = spec.mean if spec else (0.485, 0.456, 0.406)
    std = spec.std if spec else (0.229, 0.224, 0.225)
    fixed = tuple(spec.input_size) if spec and spec.family == "ssd" else None
    min_size = getattr(model, "min_size", 800)
    max_size = getattr(model, "max_size", 1333)
    apply = jax.jit(lambda v, x, s: model.apply(v, x, image_sizes=s))
    results = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        batch, sizes = transform.prepare(chunk, mean, std, min_size, max_size, fixed,
                                         1 if fixed else 32)
        dets = jax.device_get(apply(variables, batch, sizes))
        results += transform.to_original(dets, sizes, [np.shape(im)[:2] for im in chunk])
    return results
