"""SSD's geometric augmentations (torchvision references/detection ``RandomZoomOut`` and
``RandomIoUCrop``) on numpy: ``(image uint8 HWC, boxes (n, 4) xyxy, classes (n,), rng)`` ->
the same three, boxes still on the pixels they covered.

The draws follow the reference step by step (same distributions, same integer truncations), from
a numpy ``Generator`` instead of torch's global RNG.
"""
from __future__ import annotations

import numpy as np

from jaxvision.data.box_ops import crop_boxes

# the reference's SSD recipe fills with this mean (0-255 RGB), not torchvision's ImageNet one
SSD_MEAN = (123.0, 117.0, 104.0)
IOU_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def random_zoom_out(image, boxes, classes, rng: np.random.Generator, fill=SSD_MEAN,
                    side_range=(1.0, 4.0), p: float = 0.5):
    """With probability ``p``, place the image at a random spot of a canvas ``r`` times its
    size (``r`` uniform in ``side_range``) filled with ``fill``."""
    if not 1.0 <= side_range[0] <= side_range[1]:
        raise ValueError(f"side_range {side_range}: expected 1 <= low <= high")
    if rng.random() >= p:
        return image, boxes, classes
    h, w = image.shape[:2]
    r = side_range[0] + rng.random() * (side_range[1] - side_range[0])
    canvas_w, canvas_h = int(w * r), int(h * r)
    u = rng.random(2)
    left, top = int((canvas_w - w) * u[0]), int((canvas_h - h) * u[1])
    canvas = np.empty((canvas_h, canvas_w) + image.shape[2:], image.dtype)
    canvas[...] = np.round(np.asarray(fill, np.float64)).astype(image.dtype)
    canvas[top:top + h, left:left + w] = image
    shift = np.array([left, top, left, top], np.float32)
    return canvas, np.asarray(boxes, np.float32) + shift, classes


def _iou_with(boxes, crop):
    x1, y1, x2, y2 = crop
    iw = np.clip(np.minimum(boxes[:, 2], x2) - np.maximum(boxes[:, 0], x1), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], y2) - np.maximum(boxes[:, 1], y1), 0, None)
    inter = iw * ih
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (x2 - x1) * (y2 - y1) - inter)


def random_iou_crop(image, boxes, classes, rng: np.random.Generator, min_scale=0.3,
                    max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0,
                    options=IOU_OPTIONS, trials: int = 40, max_rounds: int = 1000):
    """Crop to a random window that some box overlaps with IoU at least a minimum drawn from
    ``options`` (1.0: leave the example as it is). Boxes whose centre falls outside the window
    are dropped; the rest are clipped to it.

    The reference loops until a window is found; ``max_rounds`` bounds that loop (the example
    is then returned as it is), which matters only for ``options`` without 1.0. An example with
    no boxes is returned as it is: the reference can accept no window for it either."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    h, w = image.shape[:2]
    if len(boxes) == 0:
        return image, boxes, classes
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    for _ in range(max_rounds):
        min_iou = options[rng.integers(len(options))]
        if min_iou >= 1.0:
            break
        for _ in range(trials):
            r = min_scale + (max_scale - min_scale) * rng.random(2)
            new_w, new_h = int(w * r[0]), int(h * r[1])
            if new_h == 0 or not min_aspect_ratio <= new_w / new_h <= max_aspect_ratio:
                continue
            u = rng.random(2)
            left, top = int((w - new_w) * u[0]), int((h - new_h) * u[1])
            right, bottom = left + new_w, top + new_h
            if left == right or top == bottom:
                continue
            inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
            if not inside.any():
                continue
            if _iou_with(boxes[inside], (left, top, right, bottom)).max() < min_iou:
                continue
            # a centre strictly inside keeps the clipped box non-empty: crop_boxes drops none
            kept, kept_classes, _ = crop_boxes(boxes[inside], np.asarray(classes)[inside], top,
                                               left, new_h, new_w)
            return image[top:bottom, left:right], kept, kept_classes
    return image, boxes, classes
