"""FCOS's head, loss and post-processing, as torchvision's ``models/detection/fcos.py``.

One anchor per location (a square of the level's stride) serves as the point whose distances
to the box sides are regressed (BoxLinearCoder); centre sampling picks the positive points.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
import flax.linen as nn

from jaxvision import ops
from jaxvision.heads.dense_prediction import DenseTower, postprocess, prior_bias


class FCOSHead(nn.Module):
    num_anchors: int
    num_classes: int
    num_convs: int = 4
    prior_probability: float = 0.01
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        prior, zeros = prior_bias(self.prior_probability), nn.initializers.zeros
        tower = dict(num_anchors=self.num_anchors, group_norm=True, conv_bias=True,
                     layout="flat", num_convs=self.num_convs, dtype=self.dtype)
        cls = DenseTower((("cls_logits", self.num_classes, prior),), **tower,
                         name="classification_head")(features)
        reg = DenseTower((("bbox_reg", 4, zeros), ("bbox_ctrness", 1, zeros)), **tower,
                         name="regression_head")(features)
        return {"cls_logits": cls["cls_logits"], "bbox_regression": nn.relu(reg["bbox_reg"]),
                "bbox_ctrness": reg["bbox_ctrness"]}


def fcos_match(anchors, num_first: int, num_last: int, boxes, valid,
               center_sampling_radius: float = 1.5):
    """torchvision's FCOS assignment for one image: (A,) index of the matched box or -1.

    A point is positive for a box when it lies inside it, within ``radius`` strides of its
    centre, and the box's largest side distance suits the level (4..8 strides; no lower bound
    on the first level of ``num_first`` anchors, none above on the last of ``num_last``); among
    several boxes the smallest wins.
    """
    gt_centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    sizes = anchors[:, 2] - anchors[:, 0]
    match = jnp.abs(centers[:, None] - gt_centers[None]).max(-1) < (
        center_sampling_radius * sizes[:, None])
    x, y = centers[:, 0:1], centers[:, 1:2]
    dist = jnp.stack([x - boxes[None, :, 0], y - boxes[None, :, 1],
                      boxes[None, :, 2] - x, boxes[None, :, 3] - y], axis=2)
    match &= dist.min(-1) > 0
    a = anchors.shape[0]
    lower = jnp.where(jnp.arange(a) < num_first, 0.0, sizes * 4)
    upper = jnp.where(jnp.arange(a) >= a - num_last, jnp.inf, sizes * 8)
    far = dist.max(-1)
    match &= (far > lower[:, None]) & (far < upper[:, None]) & valid[None, :]
    area = ops.box_area(boxes)
    score = match.astype(jnp.float32) * (1e8 - area[None, :])
    return jnp.where(score.max(1) < 1e-5, -1, jnp.argmax(score, axis=1)).astype(jnp.int32)


def fcos_loss(head_outputs, anchors_per_level: Sequence, boxes, labels, valid,
              center_sampling_radius: float = 1.5):
    """torchvision's ``FCOS.compute_loss`` on padded targets: focal loss over every point, GIoU
    and centre-ness BCE over the positives, all divided by the batch's positive count."""
    anchors = jnp.concatenate([jnp.asarray(a) for a in anchors_per_level])
    matched = jax.vmap(lambda b, v: fcos_match(
        anchors, anchors_per_level[0].shape[0], anchors_per_level[-1].shape[0], b, v,
        center_sampling_radius))(boxes, valid)
    fg = matched >= 0
    num_fg = jnp.maximum(1, fg.sum())
    gt = jnp.clip(matched, 0)
    gt_boxes = jnp.take_along_axis(boxes, gt[..., None], axis=1)
    gt_labels = jnp.take_along_axis(labels, gt, axis=1)
    cls_logits = head_outputs["cls_logits"]
    target = jax.nn.one_hot(gt_labels, cls_logits.shape[-1]) * fg[..., None]
    loss_cls = ops.sigmoid_focal_loss(cls_logits, target).sum()
    coder = ops.BoxLinearCoder(normalize_by_size=True)
    # background points regress onto their own anchor box: finite values, masked out below
    gt_boxes = jnp.where(fg[..., None], gt_boxes, anchors[None])
    pred = coder.decode(head_outputs["bbox_regression"], anchors[None])
    loss_box = jnp.where(fg, ops.generalized_box_iou_loss(pred, gt_boxes), 0).sum()
    t = coder.encode(anchors[None], gt_boxes)
    lr, tb = t[..., 0::2], t[..., 1::2]
    ctr = jnp.sqrt(lr.min(-1) / lr.max(-1) * (tb.min(-1) / tb.max(-1)))
    bce = optax.sigmoid_binary_cross_entropy(head_outputs["bbox_ctrness"][..., 0], ctr)
    loss_ctr = jnp.where(fg, bce, 0).sum()
    return {"classification": loss_cls / num_fg, "bbox_regression": loss_box / num_fg,
            "bbox_ctrness": loss_ctr / num_fg}


def fcos_postprocess(head_outputs, anchors_per_level: Sequence, image_sizes,
                     score_thresh: float = 0.2, nms_thresh: float = 0.6,
                     detections_per_img: int = 100, topk_candidates: int = 1000):
    """Detections scored sqrt(class probability x centre-ness), as torchvision's FCOS."""
    scores = jnp.sqrt(jax.nn.sigmoid(head_outputs["cls_logits"])
                      * jax.nn.sigmoid(head_outputs["bbox_ctrness"]))
    coder = ops.BoxLinearCoder(normalize_by_size=True)
    return postprocess(scores, head_outputs["bbox_regression"], anchors_per_level, image_sizes,
                       coder.decode, score_thresh, nms_thresh, detections_per_img,
                       topk_candidates)
