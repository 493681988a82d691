"""RetinaNet's head, loss and post-processing, as torchvision's ``models/detection/retinanet.py``.

The head maps each pyramid level (NHWC) through two towers of four 3x3 convolutions (v2 adds
GroupNorm(32)) to per-anchor class logits and box deltas.  Loss and post-processing work on
padded ground truth and fixed-size candidate lists, so both run inside one jit.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision import ops
from jaxvision.heads.dense_prediction import DenseTower, postprocess, prior_bias


class RetinaNetHead(nn.Module):
    num_anchors: int
    num_classes: int
    group_norm: bool = False  # retinanet_resnet50_fpn_v2
    prior_probability: float = 0.01
    num_convs: int = 4
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        prior, zeros = prior_bias(self.prior_probability), nn.initializers.zeros
        # Conv2dNormActivation drops the conv bias when a norm follows it
        tower = dict(num_anchors=self.num_anchors, group_norm=self.group_norm,
                     conv_bias=not self.group_norm, num_convs=self.num_convs, dtype=self.dtype)
        cls = DenseTower((("cls_logits", self.num_classes, prior),), **tower,
                         name="classification_head")(features)
        reg = DenseTower((("bbox_reg", 4, zeros),), **tower, name="regression_head")(features)
        return {"cls_logits": cls["cls_logits"], "bbox_regression": reg["bbox_reg"]}


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


def retinanet_postprocess(head_outputs, anchors_per_level: Sequence, image_sizes,
                          score_thresh: float = 0.05, nms_thresh: float = 0.5,
                          detections_per_img: int = 300, topk_candidates: int = 1000):
    """Detections from head outputs (see :func:`jaxvision.heads.dense_prediction.postprocess`)."""
    coder = ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    return postprocess(jax.nn.sigmoid(head_outputs["cls_logits"]),
                       head_outputs["bbox_regression"], anchors_per_level, image_sizes,
                       coder.decode, score_thresh, nms_thresh, detections_per_img,
                       topk_candidates)
