"""torchvision's ``GeneralizedRCNNTransform`` for inference: normalise, resize, batch; and the
way back from a padded batch's detections to each original image.

Resizing follows torchvision to the pixel: scale = min(min_size / short side, max_size / long
side) in float32, output size floor(side * scale), bilinear without antialiasing (or a fixed
size, as SSD); the batch is zero-padded at the bottom/right to a multiple of
``size_divisible``.  Detections come back through each image's own (height, width) ratios.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import jax.numpy as jnp

from jaxvision.layers.interpolate import interpolate


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    short, long = np.float32(min(height, width)), np.float32(max(height, width))
    scale = float(min(np.float32(min_size) / short, np.float32(max_size) / long))
    return math.floor(height * scale), math.floor(width * scale)


def prepare(images: Sequence[np.ndarray], mean, std, min_size: int, max_size: int,
            fixed_size: Optional[tuple[int, int]] = None, size_divisible: int = 32):
    """HWC float images in [0, 1] -> (NHWC padded batch, resized (h, w) per image)."""
    out, sizes = [], []
    for i, img in enumerate(images):
        img = np.asarray(img, np.float32)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"image {i}: expected HWC with 3 channels, got shape {img.shape}")
        x = (jnp.asarray(img) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
        size = fixed_size or resized_size(img.shape[0], img.shape[1], min_size, max_size)
        x = interpolate(x[None], size, "bilinear", align_corners=False)[0]
        out.append(np.asarray(x))
        sizes.append(size)
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    h, w = (int(math.ceil(v / size_divisible) * size_divisible) for v in (h, w))
    batch = np.zeros((len(out), h, w, 3), np.float32)
    for b, x in zip(batch, out):
        b[:x.shape[0], :x.shape[1]] = x
    return batch, np.asarray(sizes, np.int32)


def to_original(detections: dict, resized_sizes, original_sizes) -> list[dict]:
    """Padded batch detections -> one dict of numpy ``boxes``/``scores``/``labels`` per image,
    boxes scaled from the resized image back to the original (torchvision's ``resize_boxes``)."""
    results = []
    for i, (rs, os_) in enumerate(zip(resized_sizes, original_sizes)):
        n = int(detections["count"][i])
        boxes = np.asarray(detections["boxes"][i, :n], np.float32)
        ratio_h = np.float32(os_[0]) / np.float32(rs[0])
        ratio_w = np.float32(os_[1]) / np.float32(rs[1])
        boxes = boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32)
        results.append({"boxes": boxes, "scores": np.asarray(detections["scores"][i, :n]),
                        "labels": np.asarray(detections["labels"][i, :n]).astype(np.int64)})
    return results
