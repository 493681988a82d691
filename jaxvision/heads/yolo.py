"""The YOLOv3/v4 head: per scale a 3x3 conv + BN + leaky ReLU and a 1x1 predictor of
``A * (5 + C)`` channels (tx, ty, tw, th, objectness, C class logits per anchor), the box
decoding, the loss with its anchor assignment, and static-shape post-processing.

Anchors are in pixels of the network input, as darknet keeps them at 416 and at 608 (the 9 COCO
anchors of YOLOv3, k-means at 416); ``anchor_scale`` multiplies them for other input sizes
(e.g. ``64 / 608`` for 64-pixel images).  Decoding (Redmon & Farhadi 2018): centre
``(sigmoid(t_xy) + cell) * stride``, size ``exp(t_wh) * anchor`` (``t_wh`` clamped at
``log(1000 / 16)`` as torchvision's BoxCoder, so a wild logit cannot overflow).

Loss (YOLOv3's, with two documented choices):
- each valid ground truth goes to the one of all 9 anchors whose shape (both boxes centred) has
  the highest IoU with it, at that anchor's scale, in the cell holding its centre; when two
  boxes claim the same (scale, cell, anchor) the first row wins; padded rows are never assigned;
- objectness: BCE, target 1 at assigned anchors, 0 elsewhere except predictions whose best IoU
  with any ground truth exceeds ``ignore_thresh`` (0.5), which are left out; summed and divided
  by the number of positives (as YOLOv3 sums over anchors; a mean over the ~250 anchors of a
  64-px image left the one positive's gradient too small to learn: AP50 0.095 -> 0.19 after 4
  epochs of the small model on ``shapes``);
- classes: multi-label sigmoid BCE at assigned anchors, summed over classes, averaged over
  positives;
- box: 1 - GIoU of the decoded box and the ground truth (YOLOv4 uses CIoU; GIoU is the
  box-IoU loss jaxvision already has and keeps the gradient when boxes do not overlap),
  averaged over positives.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax

from jaxvision import ops
from jaxvision.heads.dense_prediction import postprocess
from jaxvision.layers import Conv2d, leaky
from jaxvision.layers.blocks import conv_norm_act

COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119),
                (116, 90), (156, 198), (373, 326))
STRIDES = (8, 16, 32)
WH_CLAMP = math.log(1000.0 / 16)


class YOLOHead(nn.Module):
    """Maps (finest first) -> list of raw predictions (N, H, W, A, 5 + C) per scale.
    ``head_{i}_0/1``: the 3x3 conv + BN at twice the map's width; ``head_{i}_pred``: the
    predictor, its objectness and class biases starting at probability 0.01."""

    num_classes: int
    num_anchors: int = 3
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool = False) -> list:
        k = 5 + self.num_classes
        bias = np.zeros((self.num_anchors, k), np.float32)
        bias[:, 4:] = -math.log(99.0)

        def bias_init(key, shape, dtype=jnp.float32):
            return jnp.asarray(bias.reshape(shape), dtype)

        outs = []
        for i, x in enumerate(feats):
            x = conv_norm_act(x, train, 2 * x.shape[-1], 3, f"head_{i}", norm=self.norm,
                              act=leaky, dtype=self.dtype)
            y = Conv2d(self.num_anchors * k, 1, bias=True, dtype=self.dtype,
                       kernel_init=nn.initializers.normal(0.01), bias_init=bias_init,
                       name=f"head_{i}_pred")(x)
            n, h, w, _ = y.shape
            outs.append(y.reshape(n, h, w, self.num_anchors, k).astype(jnp.float32))
        return outs


def anchor_table(anchor_scale: float = 1.0, anchors=COCO_ANCHORS) -> np.ndarray:
    """(scales, 3, 2) anchor (w, h) in pixels, scale s at stride ``STRIDES[s]``."""
    a = np.asarray(anchors, np.float32) * np.float32(anchor_scale)
    if a.shape != (9, 2) or (a <= 0).any():
        raise ValueError(f"YOLO anchors must be 9 positive (w, h) pairs, got shape {a.shape}")
    return a.reshape(len(STRIDES), 3, 2)


def decode(pred, anchors, stride: int):
    """(N, H, W, A, >=4) raw -> (N, H, W, A, 4) xyxy boxes in input pixels."""
    h, w = pred.shape[1:3]
    gy, gx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    cx = (jax.nn.sigmoid(pred[..., 0]) + gx[:, :, None]) * stride
    cy = (jax.nn.sigmoid(pred[..., 1]) + gy[:, :, None]) * stride
    bw = jnp.exp(jnp.minimum(pred[..., 2], WH_CLAMP)) * anchors[:, 0]
    bh = jnp.exp(jnp.minimum(pred[..., 3], WH_CLAMP)) * anchors[:, 1]
    return jnp.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)


def shape_iou(wh1, wh2):
    """(..., 2), (K, 2) -> (..., K): IoU of boxes of these sizes sharing a centre."""
    inter = (jnp.minimum(wh1[..., None, 0], wh2[:, 0]) *
             jnp.minimum(wh1[..., None, 1], wh2[:, 1]))
    return inter / (wh1[..., None, 0] * wh1[..., None, 1] + wh2[:, 0] * wh2[:, 1] - inter)


def assign(boxes, valid, anchors, grid_sizes):
    """Per scale, which ground-truth row each (y, x, anchor) predicts, for one image.

    ``boxes`` (M, 4) xyxy pixels, ``valid`` (M,), ``anchors`` (S, 3, 2), ``grid_sizes`` the
    (H, W) of each scale.  Returns a list of (H, W, 3) int32: the row, or -1.
    """
    wh = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    best = jnp.argmax(shape_iou(wh, anchors.reshape(-1, 2)), -1)  # (M,), first on ties
    out = []
    for s, (h, w) in enumerate(grid_sizes):
        cell = jnp.floor(centre / STRIDES[s]).astype(jnp.int32)
        gx, gy = jnp.clip(cell[:, 0], 0, w - 1), jnp.clip(cell[:, 1], 0, h - 1)
        ys, xs, a_s = jnp.meshgrid(jnp.arange(h), jnp.arange(w), jnp.arange(3), indexing="ij")
        hit = (valid & (best // 3 == s))[None, None, None] & (
            ys[..., None] == gy) & (xs[..., None] == gx) & (a_s[..., None] == best % 3)
        out.append(jnp.where(hit.any(-1), jnp.argmax(hit, -1), -1).astype(jnp.int32))
    return out


def _one_image_terms(preds, boxes, labels, valid, anchors, num_classes, ignore_thresh):
    """Sums for one image: obj BCE and count, box and class loss sums, positives."""
    grid = [p.shape[:2] for p in preds]
    matched = assign(boxes, valid, anchors, grid)
    obj_sum = obj_n = box_sum = cls_sum = pos = 0.0
    for s, (p, m) in enumerate(zip(preds, matched)):
        decoded = decode(p[None], anchors[s], STRIDES[s])[0]  # (H, W, 3, 4)
        ious = ops.box_iou(jax.lax.stop_gradient(decoded).reshape(-1, 4), boxes)
        best_iou = jnp.max(jnp.where(valid, jnp.nan_to_num(ious), 0.0), -1).reshape(m.shape)
        positive = m >= 0
        counted = positive | (best_iou <= ignore_thresh)
        obj = optax.sigmoid_binary_cross_entropy(p[..., 4], positive.astype(jnp.float32))
        obj_sum += jnp.sum(jnp.where(counted, obj, 0.0))
        obj_n += jnp.sum(counted)
        gt = jnp.clip(m, 0)
        giou = ops.generalized_box_iou_loss(decoded, boxes[gt])
        box_sum += jnp.sum(jnp.where(positive, giou, 0.0))
        onehot = jax.nn.one_hot(labels[gt], num_classes)
        cls = optax.sigmoid_binary_cross_entropy(p[..., 5:], onehot).sum(-1)
        cls_sum += jnp.sum(jnp.where(positive, cls, 0.0))
        pos += jnp.sum(positive)
    return jnp.stack([obj_sum, obj_n, box_sum, cls_sum, pos])


def yolo_loss(preds, anchors, boxes, labels, valid, num_classes: int,
              ignore_thresh: float = 0.5) -> dict:
    """``preds``: the head's list of (N, H, W, 3, 5 + C); ``anchors`` (S, 3, 2); ``boxes``
    (N, M, 4) xyxy pixels, ``labels`` (N, M) in [0, C), ``valid`` (N, M).  Returns
    ``{"objectness", "bbox_regression", "classification"}`` scalars (see the module doc)."""
    anchors = jnp.asarray(anchors)
    terms = jax.vmap(lambda p, b, l, v: _one_image_terms(p, b, l, v, anchors, num_classes,
                                                         ignore_thresh))(
        preds, jnp.asarray(boxes, jnp.float32), jnp.asarray(labels), jnp.asarray(valid, bool))
    obj_sum, obj_n, box_sum, cls_sum, pos = terms.sum(0)
    pos = jnp.maximum(pos, 1.0)
    return {"objectness": obj_sum / pos, "bbox_regression": box_sum / pos,
            "classification": cls_sum / pos}


def yolo_postprocess(preds, anchors, image_sizes, score_thresh: float, nms_thresh: float,
                     detections_per_img: int, topk_candidates: int) -> dict:
    """Score = objectness x class probability for every (anchor, class); per scale those above
    ``score_thresh``, the best ``topk_candidates``, clipped to the image; class-wise NMS;
    padded to ``detections_per_img`` as :func:`jaxvision.heads.dense_prediction.postprocess`."""
    scores, boxes, levels = [], [], []
    for s, p in enumerate(preds):
        n = p.shape[0]
        prob = jax.nn.sigmoid(p[..., 4:5]) * jax.nn.sigmoid(p[..., 5:])
        scores.append(prob.reshape(n, -1, prob.shape[-1]))
        boxes.append(decode(p, jnp.asarray(anchors[s]), STRIDES[s]).reshape(n, -1, 4))
        levels.append(np.zeros((boxes[-1].shape[1], 1), np.float32))  # sizes only
    return postprocess(jnp.concatenate(scores, 1), jnp.concatenate(boxes, 1), levels,
                       image_sizes, lambda b, _: b, score_thresh, nms_thresh,
                       detections_per_img, topk_candidates)
