"""Host-side box geometry for joint image+box transforms (numpy, xyxy in absolute pixels).

A box ``[x1, y1, x2, y2]`` covers the pixels ``x1 <= x < x2``, ``y1 <= y < y2`` (torchvision's
convention), so a flip maps ``x`` to ``width - x``; a resize scales by ``new / old``
(``jaxvision.ops.resize.resize_boxes``, the rule the detectors take their boxes back with).
"""
from __future__ import annotations

import numpy as np


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes of an image mirrored left-right (x1' = width - x2, x2' = width - x1)."""
    boxes = np.asarray(boxes, np.float32)
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def crop_boxes(boxes: np.ndarray, classes: np.ndarray, top: float, left: float, h: float,
               w: float, min_size: float = 0.0):
    """Boxes in the frame of the crop ``[top, top + h) x [left, left + w)``: shifted, clipped
    to the crop, and dropped (with their classes) when the clipped width or height is not
    above zero or below ``min_size``. Returns ``(boxes, classes, keep)``; ``keep`` is the mask
    over the input boxes, for any other per-box field."""
    boxes = np.asarray(boxes, np.float32) - np.array([left, top, left, top], np.float32)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (bw > 0) & (bh > 0) & (bw >= min_size) & (bh >= min_size)
    return boxes[keep], np.asarray(classes)[keep], keep
