"""torchvision's ``GeneralizedRCNNTransform`` for inference: normalise, resize, batch; and the
way back from a padded batch's detections to each original image.

Resizing follows torchvision's eager mode to the pixel (``jaxvision.ops.resize.resized_size``),
bilinear without antialiasing at the in/out size ratio (or a fixed size, as SSD); the batch is
zero-padded at the bottom/right to a multiple of ``size_divisible``.  Detections come back
through each image's own (height, width) ratios.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import jax
import jax.numpy as jnp

from jaxvision.heads.mask_rcnn import paste_masks_in_image
from jaxvision.layers.interpolate import interpolate
from jaxvision.ops.resize import resize_boxes, resize_keypoints, resized_size

__all__ = ["Preprocessing", "resized_size", "prepare", "to_original"]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What torchvision keeps in a detector's ``model.transform``: each jaxvision detector
    carries one (``model.preprocessing``), so ``jaxvision.tasks.detection.predict`` needs the
    module alone.  ``fixed_size`` is (height, width) (SSD's), else ``min_size``/``max_size``
    set the resize."""
    image_mean: tuple
    image_std: tuple
    min_size: float
    max_size: float
    fixed_size: Optional[tuple[int, int]] = None
    size_divisible: int = 32

    def prepare(self, images: Sequence[np.ndarray]):
        """HWC float images in [0, 1] -> (NHWC padded batch, resized (h, w) per image)."""
        return prepare(images, self.image_mean, self.image_std, self.min_size, self.max_size,
                       self.fixed_size, self.size_divisible)


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


_paste = jax.jit(paste_masks_in_image, static_argnums=2)


def to_original(detections: dict, resized_sizes, original_sizes) -> list[dict]:
    """Padded batch detections -> one dict of numpy ``boxes``/``scores``/``labels`` per image,
    boxes scaled from the resized image back to the original (torchvision's ``resize_boxes``).
    A Mask R-CNN's ``mask_probs`` become ``masks`` (n, 1, H, W) pasted at the original size
    with the scaled boxes, a Keypoint R-CNN's ``keypoints`` scale as the boxes (torchvision's
    ``transform.postprocess``)."""
    results = []
    for i, (rs, os_) in enumerate(zip(resized_sizes, original_sizes)):
        n = int(detections["count"][i])
        boxes = resize_boxes(detections["boxes"][i, :n], rs, os_)
        result = {"boxes": boxes, "scores": np.asarray(detections["scores"][i, :n]),
                  "labels": np.asarray(detections["labels"][i, :n]).astype(np.int64)}
        if "mask_probs" in detections:
            probs = detections["mask_probs"][i]
            # every slot at once, so one compilation serves each original size
            padded = np.zeros((len(probs), 4), np.float32)
            padded[:n] = boxes
            pasted = _paste(jnp.asarray(probs), padded, (int(os_[0]), int(os_[1])))
            result["masks"] = np.asarray(pasted)[:n, None]
        if "keypoints" in detections:
            result["keypoints"] = resize_keypoints(detections["keypoints"][i, :n], rs, os_)
            result["keypoints_scores"] = np.asarray(detections["keypoints_scores"][i, :n])
        results.append(result)
    return results
