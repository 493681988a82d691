"""SSD's head, loss and post-processing, as torchvision's ``models/detection/ssd.py``.

One 3x3 convolution per feature map for class logits and one for box deltas (SSDLite: a
depthwise 3x3 + BatchNorm + ReLU6 and a 1x1 projection; BoxCoder weights 10, 10, 5, 5); softmax classification with background class 0, hard-negative mining at 3
negatives per positive, and per-class top-k + NMS in post-processing.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
import flax.linen as nn

from jaxvision import ops
from jaxvision.layers import Conv2d, conv_norm_act

SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
LITE_NORM = dict(epsilon=1e-3, momentum=0.03)  # SSDLite's BatchNorm2d(eps=0.001, momentum=0.03)
LITE_INIT = nn.initializers.normal(0.03)  # SSDLite's _normal_init (and zero biases)
_xavier = nn.initializers.xavier_uniform()


class _Scoring(nn.Module):
    num_anchors: Sequence[int]
    num_columns: int
    dtype: Any = None
    lite_norm: Optional[str] = None  # SSDLite: depthwise 3x3 + this norm + ReLU6, then 1x1

    @nn.compact
    def __call__(self, features, train: bool = False):
        outs = []
        for i, (x, a) in enumerate(zip(features, self.num_anchors)):
            c = a * self.num_columns
            if self.lite_norm is None:
                y = Conv2d(c, 3, 1, 1, bias=True, dtype=self.dtype, kernel_init=_xavier,
                           name=f"module_list_{i}")(x)
            else:
                y = conv_norm_act(x, train, x.shape[-1], 3, f"module_list_{i}_0",
                                  norm=self.lite_norm, act=jax.nn.relu6, groups=x.shape[-1],
                                  norm_kwargs=LITE_NORM, kernel_init=LITE_INIT, dtype=self.dtype)
                y = Conv2d(c, 1, bias=True, dtype=self.dtype, kernel_init=LITE_INIT,
                           bias_init=nn.initializers.zeros, name=f"module_list_{i}_1")(y)
            n, h, w, _ = y.shape
            outs.append(y.reshape(n, h * w * a, self.num_columns))
        return jnp.concatenate(outs, axis=1).astype(jnp.float32)


class SSDHead(nn.Module):
    """torchvision's ``SSDHead``, or with ``lite_norm`` its ``SSDLiteHead`` (a depthwise-
    separable prediction block per map)."""

    num_anchors: Sequence[int]
    num_classes: int
    dtype: Any = None
    lite_norm: Optional[str] = None

    @nn.compact
    def __call__(self, features, train: bool = False):
        return {"bbox_regression": _Scoring(self.num_anchors, 4, self.dtype, self.lite_norm,
                                            name="regression_head")(features, train),
                "cls_logits": _Scoring(self.num_anchors, self.num_classes, self.dtype,
                                       self.lite_norm, name="classification_head")(features,
                                                                                   train)}


def _smooth_l1(x, beta: float = 1.0):
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def ssd_loss(head_outputs, anchors, boxes, labels, valid, iou_thresh: float = 0.5,
             neg_to_pos_ratio: float = 3.0):
    """torchvision's ``SSD.compute_loss`` on padded targets (labels count from 1; 0 is
    background).  Smooth-L1 over positives; cross-entropy over positives and the
    ``neg_to_pos_ratio`` x positives hardest negatives of each image; both divided by the
    batch's positive count."""
    matcher = ops.SSDMatcher(iou_thresh)
    coder = ops.BoxCoder(SSD_BOX_WEIGHTS)
    anchors = jnp.asarray(anchors)
    matched = jax.vmap(lambda b, v: matcher(ops.box_iou(b, anchors), v))(boxes, valid)
    fg = matched >= 0
    gt = jnp.clip(matched, 0)
    gt_boxes = jnp.take_along_axis(boxes, gt[..., None], axis=1)
    gt_boxes = jnp.where(fg[..., None], gt_boxes, anchors[None])  # finite targets off the mask
    target = coder.encode(gt_boxes, anchors[None])
    box_loss = jnp.where(fg[..., None], _smooth_l1(head_outputs["bbox_regression"] - target),
                         0).sum()
    cls_target = jnp.where(fg, jnp.take_along_axis(labels, gt, axis=1), 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        head_outputs["cls_logits"].astype(jnp.float32), cls_target)
    # rank of every non-positive anchor by its loss, hardest first (torch's double sort)
    negative = jnp.where(fg, -jnp.inf, ce)
    rank = jnp.argsort(jnp.argsort(-negative, axis=1, stable=True), axis=1)
    hard = rank < neg_to_pos_ratio * fg.sum(1, keepdims=True)
    n = jnp.maximum(1, fg.sum())
    return {"bbox_regression": box_loss / n,
            "classification": (jnp.where(fg, ce, 0).sum() + jnp.where(hard, ce, 0).sum()) / n}


def ssd_postprocess(head_outputs, anchors, image_sizes, score_thresh: float = 0.01,
                    nms_thresh: float = 0.45, detections_per_img: int = 200,
                    topk_candidates: int = 400):
    """torchvision's SSD ``postprocess_detections`` with static shapes: per class (1..K-1) the
    ``topk_candidates`` best scores above ``score_thresh``, NMS within each class, then the
    ``detections_per_img`` best of all.  NMS runs per class (vmap) so its cost is K small
    problems rather than one over K x top-k boxes; the kept set is the same."""
    coder = ops.BoxCoder(SSD_BOX_WEIGHTS)
    anchors = jnp.asarray(anchors)

    def one(logits, deltas, image_size):
        scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        boxes = ops.clip_boxes_to_image(coder.decode(deltas, anchors), image_size)
        k = min(topk_candidates, boxes.shape[0])

        def per_class(s):
            top, idx = jax.lax.top_k(jnp.where(s > score_thresh, s, -1.0), k)
            ok = top > score_thresh
            keep, _ = ops.nms(boxes[idx], top, nms_thresh, k, ok)
            real = keep >= 0
            kk = jnp.clip(keep, 0)
            return jnp.where(real, top[kk], -jnp.inf), idx[kk]

        top, idx = jax.vmap(per_class, in_axes=1)(scores[:, 1:])  # (K-1, k)
        labels = jnp.broadcast_to(jnp.arange(1, scores.shape[1])[:, None], top.shape)
        top, idx, labels = top.reshape(-1), idx.reshape(-1), labels.reshape(-1)
        # stable: equal scores keep class order, as the concatenation torchvision sorts
        order = jnp.argsort(-top, stable=True)[:detections_per_img]
        real = jnp.isfinite(top[order])
        return {"boxes": jnp.where(real[:, None], boxes[idx[order]], 0.0),
                "scores": jnp.where(real, top[order], 0.0),
                "labels": jnp.where(real, labels[order], -1),
                "count": real.sum().astype(jnp.int32)}

    return jax.vmap(one)(head_outputs["cls_logits"], head_outputs["bbox_regression"],
                         jnp.asarray(image_sizes))
