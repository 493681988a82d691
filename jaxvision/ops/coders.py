"""Box coders: torchvision's ``BoxCoder`` (R-CNN deltas) and FCOS's ``BoxLinearCoder``.

The arithmetic follows torchvision's order of operations; shapes are (..., 4) so a batch of
padded images codes in one call.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp


class BoxCoder:
    """(dx, dy, dw, dh) deltas weighted by ``weights``; decoding clamps dw, dh at
    ``bbox_xform_clip`` (log(1000/16)) before the exponential, as torchvision does."""

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 bbox_xform_clip: float = math.log(1000.0 / 16)):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder: weights must be 4 numbers (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes, proposals):
        """Deltas that take ``proposals`` (anchors) to ``reference_boxes`` (ground truth)."""
        wx, wy, ww, wh = self.weights
        ex_w = proposals[..., 2] - proposals[..., 0]
        ex_h = proposals[..., 3] - proposals[..., 1]
        ex_x = proposals[..., 0] + 0.5 * ex_w
        ex_y = proposals[..., 1] + 0.5 * ex_h
        gt_w = reference_boxes[..., 2] - reference_boxes[..., 0]
        gt_h = reference_boxes[..., 3] - reference_boxes[..., 1]
        gt_x = reference_boxes[..., 0] + 0.5 * gt_w
        gt_y = reference_boxes[..., 1] + 0.5 * gt_h
        return jnp.stack([wx * (gt_x - ex_x) / ex_w, wy * (gt_y - ex_y) / ex_h,
                          ww * jnp.log(gt_w / ex_w), wh * jnp.log(gt_h / ex_h)], axis=-1)

    def decode(self, rel_codes, boxes):
        """Boxes from deltas ``rel_codes`` (..., 4) relative to ``boxes`` (..., 4)."""
        boxes = boxes.astype(rel_codes.dtype)
        wx, wy, ww, wh = self.weights
        widths = boxes[..., 2] - boxes[..., 0]
        heights = boxes[..., 3] - boxes[..., 1]
        ctr_x = boxes[..., 0] + 0.5 * widths
        ctr_y = boxes[..., 1] + 0.5 * heights
        dx, dy = rel_codes[..., 0] / wx, rel_codes[..., 1] / wy
        dw = jnp.minimum(rel_codes[..., 2] / ww, self.bbox_xform_clip)
        dh = jnp.minimum(rel_codes[..., 3] / wh, self.bbox_xform_clip)
        pred_x = dx * widths + ctr_x
        pred_y = dy * heights + ctr_y
        half_w = 0.5 * (jnp.exp(dw) * widths)
        half_h = 0.5 * (jnp.exp(dh) * heights)
        return jnp.stack([pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h],
                         axis=-1)


class BoxLinearCoder:
    """FCOS: distances from the anchor's centre to the four sides, optionally in anchor sizes."""

    def __init__(self, normalize_by_size: bool = True):
        self.normalize_by_size = normalize_by_size

    def _size(self, boxes):
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        return jnp.stack([w, h, w, h], axis=-1)

    def encode(self, reference_boxes, proposals):
        """``reference_boxes`` are the anchors, ``proposals`` the boxes to encode (torchvision's
        argument names)."""
        cx = 0.5 * (reference_boxes[..., 0] + reference_boxes[..., 2])
        cy = 0.5 * (reference_boxes[..., 1] + reference_boxes[..., 3])
        t = jnp.stack([cx - proposals[..., 0], cy - proposals[..., 1],
                       proposals[..., 2] - cx, proposals[..., 3] - cy], axis=-1)
        return t / self._size(reference_boxes) if self.normalize_by_size else t

    def decode(self, rel_codes, boxes):
        boxes = boxes.astype(rel_codes.dtype)
        cx = 0.5 * (boxes[..., 0] + boxes[..., 2])
        cy = 0.5 * (boxes[..., 1] + boxes[..., 3])
        if self.normalize_by_size:
            rel_codes = rel_codes * self._size(boxes)
        return jnp.stack([cx - rel_codes[..., 0], cy - rel_codes[..., 1],
                          cx + rel_codes[..., 2], cy + rel_codes[..., 3]], axis=-1)
