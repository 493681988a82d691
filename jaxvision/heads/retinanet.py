"""RetinaNet's head, loss and post-processing, as torchvision's ``models/detection/retinanet.py``.

The head maps each pyramid level (NHWC) through two towers of four 3x3 convolutions (v2 adds
GroupNorm(32)) to per-anchor class logits and box deltas, flattened level by level in
torchvision's (y, x, anchor) order.  Loss and post-processing work on padded ground truth and
fixed-size candidate lists, so both run inside one jit.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np
import jax.numpy as jnp
import flax.linen as nn

from jaxvision import ops
from jaxvision.layers import Conv2d

_NORMAL_001 = nn.initializers.normal(0.01)


class _Tower(nn.Module):
    """Four conv(+GroupNorm)+ReLU blocks named ``conv_i_0`` / ``conv_i_1`` like torchvision's
    ``conv.i.0`` / ``conv.i.1``, then the predictor conv."""

    out_per_anchor: int
    num_anchors: int
    predictor: str
    group_norm: bool = False
    bias_init: Any = nn.initializers.zeros
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        c = features[0].shape[-1]
        # one set of weights shared by every level
        convs = [Conv2d(c, 3, 1, 1, bias=not self.group_norm, dtype=self.dtype,
                        kernel_init=_NORMAL_001, name=f"conv_{i}_0") for i in range(4)]
        norms = [nn.GroupNorm(32, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                              param_dtype=jnp.float32, name=f"conv_{i}_1")
                 for i in range(4)] if self.group_norm else [lambda x: x] * 4
        predictor = Conv2d(self.num_anchors * self.out_per_anchor, 3, 1, 1, bias=True,
                           dtype=self.dtype, kernel_init=_NORMAL_001, bias_init=self.bias_init,
                           name=self.predictor)
        outs = []
        for x in features:
            for conv, norm in zip(convs, norms):
                x = nn.relu(norm(conv(x)))
            x = predictor(x)
            n, h, w, _ = x.shape
            # channel a * K + k is (anchor a, class k), so this is torch's view/permute/reshape
            outs.append(x.reshape(n, h * w * self.num_anchors, self.out_per_anchor))
        return jnp.concatenate(outs, axis=1).astype(jnp.float32)


class RetinaNetHead(nn.Module):
    num_anchors: int
    num_classes: int
    group_norm: bool = False  # retinanet_resnet50_fpn_v2
    prior_probability: float = 0.01
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        prior = -math.log((1 - self.prior_probability) / self.prior_probability)
        cls = _Tower(self.num_classes, self.num_anchors, "cls_logits", self.group_norm,
                     nn.initializers.constant(prior), self.dtype, name="classification_head")
        reg = _Tower(4, self.num_anchors, "bbox_reg", self.group_norm, dtype=self.dtype,
                     name="regression_head")
        return {"cls_logits": cls(features), "bbox_regression": reg(features)}


def _per_image_loss(cls_logits, bbox_regression, anchors, boxes, labels, valid, matcher,
                    coder, box_loss):
    num_classes = cls_logits.shape[-1]
    matched = matcher(ops.box_iou(boxes, anchors), valid)
    fg = matched >= 0
    num_fg = jnp.maximum(1, fg.sum())
    gt = jnp.clip(matched, 0)
    target = jax.nn.one_hot(labels[gt], num_classes) * fg[:, None]
    counted = (matched != ops.BETWEEN_THRESHOLDS)[:, None]
    cls_loss = jnp.where(counted, ops.sigmoid_focal_loss(cls_logits, target), 0).sum() / num_fg
    # background anchors get their own box as target so no log(0) reaches a gradient
    matched_boxes = jnp.where(fg[:, None], boxes[gt], anchors)
    if box_loss == "l1":
        per_anchor = jnp.abs(bbox_regression - coder.encode(matched_boxes, anchors)).sum(-1)
    else:
        per_anchor = ops.generalized_box_iou_loss(coder.decode(bbox_regression, anchors),
                                                  matched_boxes)
    return cls_loss, jnp.where(fg, per_anchor, 0).sum() / num_fg


def retinanet_loss(head_outputs, anchors, boxes, labels, valid, box_loss: str = "l1",
                   fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.4):
    """torchvision's ``RetinaNet.compute_loss`` on padded targets.

    ``anchors`` (A, 4) in the padded batch's pixels; ``boxes`` (N, G, 4), ``labels`` (N, G),
    ``valid`` (N, G) mark the real ground truth.  Focal loss over anchors not between the IoU
    thresholds and box loss (``"l1"`` on BoxCoder deltas, or ``"giou"`` as v2) over foreground
    anchors, each divided by the image's foreground count, then averaged over images.
    """
    if box_loss not in ("l1", "giou"):
        raise ValueError(f"retinanet_loss: box_loss must be 'l1' or 'giou', got {box_loss!r}")
    matcher = ops.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
    coder = ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    per_image = jax.vmap(lambda c, r, b, l, v: _per_image_loss(
        c, r, anchors, b, l, v, matcher, coder, box_loss))
    cls, reg = per_image(head_outputs["cls_logits"], head_outputs["bbox_regression"],
                         boxes, labels, valid)
    return {"classification": cls.mean(), "bbox_regression": reg.mean()}


def _level_candidates(logits, deltas, anchors, image_size, coder, score_thresh, topk):
    num_classes = logits.shape[-1]
    scores = jax.nn.sigmoid(logits).reshape(-1)
    k = min(topk, scores.shape[0])
    top, idx = jax.lax.top_k(jnp.where(scores > score_thresh, scores, -1.0), k)
    anchor_idx, labels = idx // num_classes, idx % num_classes
    boxes = coder.decode(deltas[anchor_idx], jnp.asarray(anchors)[anchor_idx])
    boxes = ops.clip_boxes_to_image(boxes, image_size)
    return boxes, top, labels, top > score_thresh


def retinanet_postprocess(head_outputs, anchors_per_level: Sequence[jax.Array], image_sizes,
                          score_thresh: float = 0.05, nms_thresh: float = 0.5,
                          detections_per_img: int = 300, topk_candidates: int = 1000):
    """torchvision's ``postprocess_detections`` with static shapes.

    Per level: scores above ``score_thresh``, the best ``topk_candidates``, decoded and clipped
    to the image's (resized, unpadded) size; then class-wise NMS over all levels.  Returns
    ``boxes`` (N, D, 4), ``scores`` (N, D), ``labels`` (N, D) sorted by score and padded past
    ``count`` (N,), with D = ``detections_per_img``.
    """
    coder = ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    sizes = [a.shape[0] for a in anchors_per_level]
    splits = [int(s) for s in np.cumsum(sizes)[:-1]]

    def one(logits, deltas, image_size):
        parts = [_level_candidates(l, d, a, image_size, coder, score_thresh, topk_candidates)
                 for l, d, a in zip(jnp.split(logits, splits), jnp.split(deltas, splits),
                                    anchors_per_level)]
        boxes, scores, labels, ok = (jnp.concatenate(p) for p in zip(*parts))
        keep, count = ops.batched_nms(boxes, scores, labels, nms_thresh, detections_per_img, ok)
        real = keep >= 0
        k = jnp.clip(keep, 0)
        return {"boxes": jnp.where(real[:, None], boxes[k], 0.0),
                "scores": jnp.where(real, scores[k], 0.0),
                "labels": jnp.where(real, labels[k], -1), "count": count}

    return jax.vmap(one)(head_outputs["cls_logits"], head_outputs["bbox_regression"],
                         jnp.asarray(image_sizes))
