"""The region proposal network of torchvision's Faster R-CNN (``models/detection/rpn.py``),
with static shapes.

``RPNHead``: per level, ``conv_depth`` 3x3 conv + ReLU (v1 one, v2 two), then a 1x1 conv to one
objectness logit per anchor and one to four box deltas per anchor; one set of weights for all
levels.  ``rpn_proposals``: decode (BoxCoder(1, 1, 1, 1)), the ``pre_nms_top_n`` best anchors
of each level, sigmoid, clip to the image, drop boxes thinner than ``min_size``, drop scores
below ``score_thresh``, NMS per level across the levels (``batched_nms`` with the level as the
class), the ``post_nms_top_n`` best: padded to ``post_nms_top_n`` rows with a valid mask.
Training: ``rpn_targets`` (Matcher 0.7 / 0.3 with low-quality matches), ``sample_labels``
(256 anchors an image, at most half positive, drawn from a JAX key) and ``rpn_loss`` (smooth-L1
beta 1/9 over the number sampled, binary cross entropy), as torchvision's.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
import flax.linen as nn

from jaxvision import ops
from jaxvision.layers import Conv2d
from jaxvision.ops.samplers import sample_labels  # noqa: F401  (the RPN's sampler)

# torchvision's AnchorGenerator of the FPN Faster R-CNNs (_default_anchorgen): one size per
# level, three aspect ratios
FPN_ANCHORS = ops.AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
# fasterrcnn_mobilenet_v3_large(_320)_fpn's: all five sizes at each of its three levels
MOBILENET_ANCHORS = ops.AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
_normal = nn.initializers.normal(0.01)


class RPNHead(nn.Module):
    num_anchors: int
    conv_depth: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        """NHWC maps -> (objectness per level (N, H, W, A), deltas per level (N, H, W, A * 4))."""
        convs = [Conv2d(features[0].shape[-1], 3, 1, 1, bias=True, dtype=self.dtype,
                        kernel_init=_normal, name=f"conv_{i}_0") for i in range(self.conv_depth)]
        cls = Conv2d(self.num_anchors, 1, bias=True, dtype=self.dtype, kernel_init=_normal,
                     name="cls_logits")
        reg = Conv2d(self.num_anchors * 4, 1, bias=True, dtype=self.dtype, kernel_init=_normal,
                     name="bbox_pred")
        logits, deltas = [], []
        for x in features:
            for conv in convs:
                x = nn.relu(conv(x))
            logits.append(cls(x))
            deltas.append(reg(x))
        return logits, deltas


def _per_image(boxes, scores, levels, size, post_nms_top_n, nms_thresh, score_thresh,
               min_size):
    boxes = ops.clip_boxes_to_image(boxes, (size[0], size[1]))
    keep = ops.small_box_mask(boxes, min_size) & (scores >= score_thresh)
    idx, count = ops.batched_nms(boxes, scores, levels, nms_thresh, post_nms_top_n, keep)
    valid = jnp.arange(post_nms_top_n) < count
    safe = jnp.maximum(idx, 0)
    return (jnp.where(valid[:, None], boxes[safe], 0.0), jnp.where(valid, scores[safe], 0.0),
            valid)


def rpn_proposals(objectness, deltas, anchors, image_sizes, pre_nms_top_n: int = 1000,
                  post_nms_top_n: int = 1000, nms_thresh: float = 0.7,
                  score_thresh: float = 0.0, min_size: float = 1e-3):
    """torchvision's ``RegionProposalNetwork`` in eval mode (``filter_proposals``).

    ``objectness``/``deltas``: per level (N, H, W, A) and (N, H, W, A * 4) from
    :class:`RPNHead`; ``anchors``: per level (H * W * A, 4) (``ops.AnchorGenerator``);
    ``image_sizes`` (N, 2) each image's unpadded (h, w).  Returns ``boxes`` (N, P, 4),
    ``scores`` (N, P) (sigmoid), ``valid`` (N, P) with P = ``post_nms_top_n``, best first."""
    if len(objectness) != len(deltas) or len(deltas) != len(anchors):
        raise ValueError(f"rpn_proposals: {len(objectness)} objectness, {len(deltas)} delta "
                         f"and {len(anchors)} anchor levels; expected one of each per level")
    coder = ops.BoxCoder((1.0, 1.0, 1.0, 1.0))
    n = objectness[0].shape[0]
    boxes, scores, levels = [], [], []
    for lvl, (logit, delta, anchor) in enumerate(zip(objectness, deltas, anchors)):
        logit = jax.lax.stop_gradient(logit.reshape(n, -1))
        delta = jax.lax.stop_gradient(delta.reshape(n, -1, 4))
        if logit.shape[1] != anchor.shape[0]:
            raise ValueError(f"rpn_proposals: level {lvl} has {logit.shape[1]} objectness "
                             f"values but {anchor.shape[0]} anchors")
        top, idx = jax.lax.top_k(logit, min(pre_nms_top_n, logit.shape[1]))
        picked = jnp.take_along_axis(delta, idx[..., None], axis=1)
        boxes.append(coder.decode(picked, jnp.asarray(anchor)[idx]))
        scores.append(jax.nn.sigmoid(top))
        levels.append(jnp.full(idx.shape[1:], lvl, jnp.int32))
    boxes, scores, levels = (jnp.concatenate(boxes, 1), jnp.concatenate(scores, 1),
                             jnp.concatenate(levels))
    per_image = lambda b, s, size: _per_image(b, s, levels, size, post_nms_top_n, nms_thresh,
                                              score_thresh, min_size)
    out = jax.vmap(per_image)(boxes, scores, jnp.asarray(image_sizes))
    return dict(zip(("boxes", "scores", "valid"), out))


def rpn_targets(anchors, boxes, valid, fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3):
    """torchvision's ``assign_targets_to_anchors``: per anchor a label (1 object, 0 background,
    -1 ignored; low-quality matches kept) and the box deltas to its ground truth.
    ``anchors`` (A, 4) all levels; ``boxes`` (N, G, 4) with ``valid`` (N, G)."""
    matcher = ops.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
    coder = ops.BoxCoder((1.0, 1.0, 1.0, 1.0))

    def one(b, v):
        match = matcher(ops.box_iou(b, anchors), v)
        labels = jnp.where(match >= 0, 1, jnp.where(match == ops.BELOW_LOW_THRESHOLD, 0, -1))
        # an image without ground truth: zeros as matched boxes, as torchvision
        matched = jnp.where(v.any(), b[jnp.maximum(match, 0)], 0.0)
        return labels.astype(jnp.int32), coder.encode(matched, anchors)

    return jax.vmap(one)(boxes, valid)


def rpn_loss(objectness, deltas, labels, targets, positive, negative):
    """torchvision's ``RegionProposalNetwork.compute_loss`` on sampled anchors: smooth-L1
    (beta 1/9) of the positives' deltas summed over the number sampled, and the binary cross
    entropy of the sampled objectness.  ``objectness``/``deltas`` per level as from
    :class:`RPNHead`; the rest (N, A[, 4]) from :func:`rpn_targets` and
    :func:`sample_labels`."""
    n = objectness[0].shape[0]
    logits = jnp.concatenate([o.reshape(n, -1) for o in objectness], 1)
    pred = jnp.concatenate([d.reshape(n, -1, 4) for d in deltas], 1)
    sampled = positive | negative
    count = sampled.sum()
    # only the positives' targets count; the others may be -inf (an image without ground
    # truth) and would poison the gradient through the unused branch
    diff = jnp.abs(pred - jnp.where(positive[..., None], targets, 0.0))
    beta = 1.0 / 9
    smooth = jnp.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta)
    box_loss = jnp.where(positive[..., None], smooth, 0.0).sum() / count
    bce = optax.sigmoid_binary_cross_entropy(logits, (labels >= 1).astype(logits.dtype))
    return {"loss_objectness": jnp.where(sampled, bce, 0.0).sum() / count,
            "loss_rpn_box_reg": box_loss}
