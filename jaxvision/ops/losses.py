"""Detection losses, elementwise (``reduction="none"``) as torchvision.ops defines them; the
caller masks padded rows and sums, which keeps shapes static under jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """Focal loss of RetinaNet (alpha < 0 disables the class weighting, as torchvision)."""
    logits = logits.astype(jnp.float32)
    p = jax.nn.sigmoid(logits)
    ce = optax.sigmoid_binary_cross_entropy(logits, targets)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def _inter_union(b1, b2):
    x1, y1, x2, y2 = (b1[..., i] for i in range(4))
    x1g, y1g, x2g, y2g = (b2[..., i] for i in range(4))
    xi1, yi1 = jnp.maximum(x1, x1g), jnp.maximum(y1, y1g)
    xi2, yi2 = jnp.minimum(x2, x2g), jnp.minimum(y2, y2g)
    inter = jnp.where((yi2 > yi1) & (xi2 > xi1), (xi2 - xi1) * (yi2 - yi1), 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter, union


def generalized_box_iou_loss(boxes1, boxes2, eps: float = 1e-7):
    """1 - GIoU of paired boxes (..., 4), as ``torchvision.ops.generalized_box_iou_loss``."""
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    xc1 = jnp.minimum(boxes1[..., 0], boxes2[..., 0])
    yc1 = jnp.minimum(boxes1[..., 1], boxes2[..., 1])
    xc2 = jnp.maximum(boxes1[..., 2], boxes2[..., 2])
    yc2 = jnp.maximum(boxes1[..., 3], boxes2[..., 3])
    area_c = (xc2 - xc1) * (yc2 - yc1)
    return 1 - (iou - (area_c - union) / (area_c + eps))
