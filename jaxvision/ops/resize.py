"""The resize rule of torchvision's detectors (``GeneralizedRCNNTransform``), and how boxes and
keypoints follow a resize: shared by the detectors' inference transform (there and back), the
detection data pipeline and the detection task (back to the original's pixels)."""
from __future__ import annotations

import numpy as np


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """(h, w) that torchvision's eager ``_resize_image_and_masks`` gives an image of
    ``height`` x ``width``: scale = min(min_size / short side, max_size / long side) in Python
    (float64) arithmetic, then ``F.interpolate(scale_factor=scale,
    recompute_scale_factor=True)`` truncates each side times the scale.  (Only TorchScript and
    tracing compute the scale in float32, which gives 799 rows instead of 800 for a 480x640
    image; the bilinear resampling itself then uses the in/out size ratio, not ``scale``.)"""
    if min(height, width) < 1:
        raise ValueError(f"resized_size: image of {height}x{width} has an empty side")
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def _ratios(src_hw, dst_hw):
    # float32 quotients, as torchvision's resize_boxes / resize_keypoints divide tensors
    return (np.float32(dst_hw[0]) / np.float32(src_hw[0]),
            np.float32(dst_hw[1]) / np.float32(src_hw[1]))


def resize_boxes(boxes, src_hw, dst_hw) -> np.ndarray:
    """xyxy boxes of an image of size ``src_hw`` (h, w) resized to ``dst_hw``; x and y scale
    apart (torchvision's ``transform.resize_boxes``)."""
    rh, rw = _ratios(src_hw, dst_hw)
    return np.asarray(boxes, np.float32) * np.array([rw, rh, rw, rh], np.float32)


def resize_keypoints(keypoints, src_hw, dst_hw) -> np.ndarray:
    """(..., K, 3) keypoints (x, y, v) of an image of size ``src_hw`` resized to ``dst_hw``:
    x and y scale apart, v unchanged (torchvision's ``transform.resize_keypoints``)."""
    rh, rw = _ratios(src_hw, dst_hw)
    out = np.array(keypoints, np.float32)
    out[..., 0] *= rw
    out[..., 1] *= rh
    return out


def to_original_pixels(coords, scale) -> np.ndarray:
    """Boxes (..., 4) xyxy or keypoints (..., 3) (x, y, v) of an image that the data transform
    resized by ``scale`` (its (y, x) factors), back in the original image's pixels: x and y are
    divided by their factor, a trailing unpaired value (visibility) is kept.

    A division, not :func:`resize_boxes`' float32 ratio multiply: the detection task's COCO
    numbers have always been computed this way, and the two differ in the last bit."""
    out = np.asarray(coords, np.float32)
    sy, sx = (float(v) for v in scale)
    n = out.shape[-1]
    factors = np.ones(n, np.float32)
    factors[0:n - n % 2:2], factors[1:n - n % 2:2] = sx, sy
    return out / factors
