"""Box arithmetic on ``(x1, y1, x2, y2)`` boxes, written as torchvision.ops computes it.

Every function is a pure jnp expression with static shapes, so it runs under jit and vmap on
padded ground truth.  The formulas keep torchvision's order of operations (intersection over
``area1 + area2 - inter``) so results agree to the last bit where XLA does not reassociate.
"""
from __future__ import annotations

import jax.numpy as jnp


def box_area(boxes):
    """(..., 4) -> (...): width times height, as ``torchvision.ops.box_area``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(boxes1, boxes2):
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = jnp.clip(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area1[..., :, None] + area2[..., None, :] - inter


def box_iou(boxes1, boxes2):
    """(..., N, 4), (..., M, 4) -> (..., N, M) IoU.  Two empty boxes give NaN, as torchvision."""
    inter, union = _inter_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1, boxes2):
    """(..., N, 4), (..., M, 4) -> (..., N, M) GIoU, as ``torchvision.ops.generalized_box_iou``."""
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    lt = jnp.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = jnp.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = jnp.clip(rb - lt, 0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def clip_boxes_to_image(boxes, size):
    """Clamp x to [0, width] and y to [0, height]; ``size`` is (height, width)."""
    height, width = size
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def small_box_mask(boxes, min_size: float):
    """True where both sides are at least ``min_size``: ``remove_small_boxes`` as a mask, since a
    jitted function cannot return a data-dependent number of indices."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Between "xyxy", "xywh" and "cxcywh", as ``torchvision.ops.box_convert``."""
    fmts = ("xyxy", "xywh", "cxcywh")
    if in_fmt not in fmts or out_fmt not in fmts:
        raise ValueError(f"box_convert: formats must be among {fmts}, got {in_fmt!r} -> {out_fmt!r}")
    if in_fmt == out_fmt:
        return boxes
    a, b, c, d = (boxes[..., i] for i in range(4))
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = (a + c) / 2, (b + d) / 2, c - a, d - b
    return jnp.stack([a, b, c, d], axis=-1)
