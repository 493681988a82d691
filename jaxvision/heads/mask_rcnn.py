"""Mask R-CNN's mask branch (torchvision's ``models/detection/mask_rcnn.py`` and the mask parts
of ``roi_heads.py``), with static shapes: RoIs are padded per image with a ``valid`` mask.

``mask_rcnn_heads``: torchvision's ``MaskRCNNHeads`` (four 3x3 conv + ReLU; v2 puts a norm
between, BatchNorm in torchvision's ``maskrcnn_resnet50_fpn_v2``).  torch keeps it as a flat
``nn.Sequential`` (``mask_head.0.0``, ``mask_head.0.1``, ...), so it is a function that makes
``{name}_{i}_0`` / ``{name}_{i}_1`` children of the module that calls it, as ``fcn_head`` does:
converted weights land under the generic rule.  ``MaskRCNNPredictor`` (``conv5_mask`` 2x2 / 2
transposed conv + ReLU, ``mask_fcn_logits`` 1x1) is an ordinary module.

Training: ``project_masks_on_boxes`` (RoIAlign of each positive proposal's ground-truth mask to
M x M, torchvision's adaptive sampling) and ``maskrcnn_loss`` (binary cross entropy of the
ground-truth class's mask, mean over the valid proposals' pixels).  Inference:
``maskrcnn_inference`` (sigmoid of the label's mask) and ``paste_masks_in_image`` (each M x M
mask padded by one pixel, its box widened to match and truncated to integers, the mask resized
bilinearly to the box and pasted into a zero image of static size).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn

from jaxvision.layers.conv import (Conv2d, ConvTranspose2d, kaiming_normal_fan_out,
                                   uniform_bias)
from jaxvision.layers.interpolate import linear_taps
from jaxvision.layers.norm import norm_factory
from jaxvision.ops.roi_align import _axis, default_max_sampling, exact_div, rounded

MASK_LAYERS = (256, 256, 256, 256)
MASK_NORMS = (None, "batch", "group")


def _rois(x, what: str):
    if x.ndim < 4:
        raise ValueError(f"{what}: expected RoI maps (..., H, W, C), got shape {x.shape}")
    return x.reshape(-1, *x.shape[-3:])


def mask_rcnn_heads(x, train: bool = False, layers: Sequence[int] = MASK_LAYERS,
                    dilation: int = 1, name: str = "mask_head", *, norm: Optional[str] = None,
                    valid=None, dtype: Any = None):
    """torchvision's ``MaskRCNNHeads(in, layers, dilation, norm_layer)`` on pooled RoI maps
    ``x`` (..., 14, 14, C) -> (..., 14, 14, layers[-1]).  Call inside a compact method.

    ``norm``: None (v1: convs with bias), ``"batch"`` (v2, torchvision's) or ``"group"``
    (GroupNorm(32)); with a norm the convs have no bias, as ``Conv2dNormActivation``.
    ``valid`` (x's leading shape) marks the real RoIs, whose statistics alone a training
    BatchNorm takes."""
    if norm not in MASK_NORMS:
        raise ValueError(f"mask_rcnn_heads: norm must be one of {MASK_NORMS}, got {norm!r}")
    lead = x.shape[:-3]
    x = _rois(x, "mask_rcnn_heads")
    mask = None if valid is None else jnp.broadcast_to(valid, lead).reshape(-1, 1, 1)
    for i, features in enumerate(layers):
        x = Conv2d(features, 3, 1, dilation, dilation, bias=norm is None, dtype=dtype,
                   kernel_init=kaiming_normal_fan_out, bias_init=nn.initializers.zeros,
                   name=f"{name}_{i}_0")(x)
        if norm is not None:
            layer = norm_factory(norm, dtype)(name=f"{name}_{i}_1")
            x = layer(x, train, mask=mask) if norm == "batch" else layer(x, train)
        x = nn.relu(x)
    return x.reshape(*lead, *x.shape[1:])


class MaskRCNNPredictor(nn.Module):
    """torchvision's ``MaskRCNNPredictor(in, dim_reduced, num_classes)``: (..., 14, 14, C) ->
    mask logits (..., 28, 28, num_classes)."""

    num_classes: int
    dim_reduced: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        lead = x.shape[:-3]
        x = _rois(x, "MaskRCNNPredictor")
        # torch's default bias init, fan_in from the (in, out, 2, 2) weight: out * 4
        x = ConvTranspose2d(self.dim_reduced, (2, 2), (2, 2), dtype=self.dtype,
                            bias_init=uniform_bias(self.dim_reduced * 4), name="conv5_mask")(x)
        x = Conv2d(self.num_classes, 1, bias=True, in_features=self.dim_reduced,
                   dtype=self.dtype, kernel_init=kaiming_normal_fan_out,
                   name="mask_fcn_logits")(nn.relu(x))
        return x.reshape(*lead, *x.shape[1:])


def _sampling_matrix(start, size, grid, bins: int, bound: int, pixels: int, limit):
    """RoIAlign along one axis as a (K, bins, pixels) matrix: each bin's bilinear samples'
    weights added at the rows (columns) they read (``_axis``'s, 0 for the outside samples);
    ``limit`` (K,) the map's extent each RoI sees (<= ``pixels``)."""
    index, weight = _axis(start, size, grid, bins, bound, limit)
    k = start.shape[0]
    rois = jnp.arange(k)[:, None, None, None]
    cells = jnp.arange(bins)[None, :, None, None]
    return jnp.zeros((k, bins, pixels), jnp.float32).at[rois, cells, index].add(weight)


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, output_size: int = 28,
                           max_sampling: Optional[Union[int, Sequence[int]]] = None,
                           mask_sizes=None):
    """torchvision's ``project_masks_on_boxes`` for a padded batch: RoIAlign (spatial scale 1,
    adaptive sampling, aligned=False) of ground-truth mask ``matched_idxs[n, p]`` of image n
    onto box ``boxes[n, p]``.  ``gt_masks`` (N, G, H, W), ``boxes`` (N, P, 4) xyxy,
    ``matched_idxs`` (N, P) -> (N, P, M, M).  ``max_sampling`` bounds the adaptive grid (by
    default enough for any box inside the mask; a box that needs more gives NaN).

    On one channel RoIAlign is separable: a sample's weight is a row weight times a column
    weight, and a sample outside the map is outside along one axis.  So each RoI's targets are
    ``rows @ mask @ cols.T`` / samples, with (M, H) and (M, W) matrices holding every sample's
    weights: two matmuls where ``ops.roi_align`` gathers every sample of a grid bounded by the
    largest box (at COCO's 800 x 1066 masks, 256 RoIs: 18.6 s that way here, torchvision
    1.1 s).  Equal to torchvision's up to the order of float32 additions.

    ``mask_sizes`` (N, 2): each image's (h, w) inside a padded batch's masks (default: all of
    them).  torchvision's masks end there: a sample in its last pixel row reads that row alone
    (RoIAlign's edge clamp), not a blend with the padding."""
    if gt_masks.ndim != 4:
        raise ValueError(f"project_masks_on_boxes: gt_masks must be (N, G, H, W), got shape "
                         f"{gt_masks.shape}")
    n, g, h, w = gt_masks.shape
    if boxes.shape[:1] != (n,) or boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"project_masks_on_boxes: boxes must be (N, P, 4) with N = {n}, got "
                         f"shape {boxes.shape}")
    if matched_idxs.shape != boxes.shape[:2]:
        raise ValueError(f"project_masks_on_boxes: matched_idxs must be (N, P) = "
                         f"{boxes.shape[:2]}, got shape {matched_idxs.shape}")
    p, m = boxes.shape[1], output_size
    my, mx = default_max_sampling((h, w), m) if max_sampling is None else (
        (max_sampling, max_sampling) if isinstance(max_sampling, int) else tuple(max_sampling))
    # sample_roi_grid's RoI arithmetic (aligned=False: at least 1 x 1, no half-pixel shift)
    b = jax.lax.stop_gradient(jnp.asarray(boxes, jnp.float32)).reshape(-1, 4)
    x1, y1, x2, y2 = (rounded(b[:, j], b[:, j]) for j in range(4))
    bin_h = exact_div(jnp.maximum(y2 - y1, 1.0), m)
    bin_w = exact_div(jnp.maximum(x2 - x1, 1.0), m)
    grid_h, grid_w = jnp.ceil(bin_h).astype(jnp.int32), jnp.ceil(bin_w).astype(jnp.int32)
    if mask_sizes is None:
        mask_sizes = jnp.broadcast_to(jnp.array([h, w], jnp.int32), (n, 2))
    limit = jnp.repeat(jnp.asarray(mask_sizes, jnp.int32), p, axis=0)  # (K, 2)
    rows = _sampling_matrix(y1, bin_h, grid_h, m, my, h, limit[:, 0])  # (K, M, H)
    cols = _sampling_matrix(x1, bin_w, grid_w, m, mx, w, limit[:, 1])  # (K, M, W)
    count = jnp.maximum(grid_h * grid_w, 1).astype(jnp.float32)
    which = jnp.arange(n, dtype=jnp.int32)[:, None] * g + jnp.clip(matched_idxs, 0, g - 1)
    masks = jax.lax.stop_gradient(jnp.asarray(gt_masks)).reshape(n * g, h, w)
    hi = jax.lax.Precision.HIGHEST

    def one(args):
        r, c, i = args
        mask = jax.lax.dynamic_index_in_dim(masks, i, keepdims=False).astype(jnp.float32)
        return jnp.matmul(jnp.matmul(r, mask, precision=hi), c.T, precision=hi)

    out = jax.lax.map(one, (rows, cols, which.reshape(-1)), batch_size=min(16, n * p))
    out = exact_div(out, count[:, None, None])
    over = (grid_h > my) | (grid_w > mx)  # more samples than the static bound: say so
    out = jnp.where(over[:, None, None], jnp.nan, out)
    return out.reshape(n, p, m, m)


def maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, matched_idxs, valid,
                  max_sampling: Optional[Union[int, Sequence[int]]] = None, mask_sizes=None):
    """torchvision's ``maskrcnn_loss`` on padded positives: binary cross entropy with logits of
    each valid proposal's ground-truth class channel against its projected mask, the mean over
    the valid proposals' M x M pixels (0 when there are none, as torchvision's).

    ``mask_logits`` (N, P, M, M, K) from :class:`MaskRCNNPredictor`; ``proposals`` (N, P, 4)
    the positive proposals, ``matched_idxs`` (N, P) their ground truth, ``valid`` (N, P);
    ``gt_masks`` (N, G, H, W), ``gt_labels`` (N, G)."""
    if mask_logits.ndim != 5 or mask_logits.shape[2] != mask_logits.shape[3]:
        raise ValueError(f"maskrcnn_loss: mask_logits must be (N, P, M, M, K), got shape "
                         f"{mask_logits.shape}")
    if mask_logits.shape[:2] != proposals.shape[:2] or valid.shape != proposals.shape[:2]:
        raise ValueError(f"maskrcnn_loss: mask_logits {mask_logits.shape}, proposals "
                         f"{proposals.shape} and valid {valid.shape} must share (N, P)")
    m = mask_logits.shape[2]
    targets = project_masks_on_boxes(gt_masks, proposals, matched_idxs, m, max_sampling,
                                     mask_sizes)
    labels = jnp.take_along_axis(gt_labels, jnp.clip(matched_idxs, 0, gt_labels.shape[1] - 1),
                                 axis=1)
    logits = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]
    # padded proposals may project to NaN (outside the sampling bound): keep them out entirely
    targets = jnp.where(valid[:, :, None, None], targets, 0.0)
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets)
    count = valid.sum() * (m * m)
    return jnp.where(valid[:, :, None, None], bce, 0.0).sum() / jnp.maximum(count, 1)


def maskrcnn_inference(mask_logits, labels):
    """torchvision's ``maskrcnn_inference``: the sigmoid of each RoI's ``labels`` channel.
    ``mask_logits`` (..., M, M, K), ``labels`` (...) -> (..., M, M) probabilities."""
    if mask_logits.shape[:-3] != labels.shape:
        raise ValueError(f"maskrcnn_inference: labels {labels.shape} must match the RoIs of "
                         f"mask_logits {mask_logits.shape[:-3]}")
    picked = jnp.take_along_axis(mask_logits, labels[..., None, None, None], axis=-1)[..., 0]
    return jax.nn.sigmoid(picked.astype(jnp.float32))


def expand_boxes(boxes, scale: float):
    """torchvision's ``expand_boxes``: each box scaled by ``scale`` about its centre, float32,
    each product rounded before the sum it feeds (torch's eager ops; XLA would fuse an FMA)."""
    w_half = (boxes[..., 2] - boxes[..., 0]) * 0.5
    h_half = (boxes[..., 3] - boxes[..., 1]) * 0.5
    x_c = (boxes[..., 2] + boxes[..., 0]) * 0.5
    y_c = (boxes[..., 3] + boxes[..., 1]) * 0.5
    w_half = rounded(w_half * np.float32(scale), x_c)
    h_half = rounded(h_half * np.float32(scale), y_c)
    return jnp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], -1)


def _paste_axis(start, end, size: int, limit, padded: int):
    """One image axis of the paste: per box, the two source taps (into the padded mask) and
    weights of every image row (column), and whether that row lies in the pasted range."""
    length = jnp.maximum(end - start + 1, 1)  # torchvision's int(box[2] - box[0] + 1), >= 1
    local = jnp.arange(size, dtype=jnp.int32)[None, :] - start[:, None]
    (i0, i1), (w0, w1) = linear_taps(local, padded, length[:, None])
    pos = jnp.arange(size, dtype=jnp.int32)[None, :]
    inside = (local >= 0) & (local < length[:, None]) & (pos < limit)
    return i0, i1, w0, w1, inside


def _paste(masks, boxes, shape, padding: int, image_size):
    m = masks.shape[-1]
    padded = m + 2 * padding
    masks = jnp.pad(masks.astype(jnp.float32), ((0, 0), (padding, padding), (padding, padding)))
    scale = float(padded) / m  # a Python float, as torchvision's expand_masks
    boxes = jnp.trunc(expand_boxes(boxes.astype(jnp.float32), scale)).astype(jnp.int32)
    y0, y1, wy0, wy1, in_y = _paste_axis(boxes[:, 1], boxes[:, 3], shape[0], image_size[0],
                                         padded)
    x0, x1, wx0, wx1, in_x = _paste_axis(boxes[:, 0], boxes[:, 2], shape[1], image_size[1],
                                         padded)
    # torch's order: along x within each source row, then the two rows
    gather_cols = lambda idx: jnp.take_along_axis(masks, idx[:, None, :], axis=2)
    rows = gather_cols(x0) * wx0[:, None, :] + gather_cols(x1) * wx1[:, None, :]  # (D, M+2, W)
    gather_rows = lambda idx: jnp.take_along_axis(rows, idx[:, :, None], axis=1)
    out = gather_rows(y0) * wy0[:, :, None] + gather_rows(y1) * wy1[:, :, None]  # (D, H, W)
    return jnp.where(in_y[:, :, None] & in_x[:, None, :], out, 0.0)


def paste_masks_in_image(masks, boxes, shape: Sequence[int], padding: int = 1,
                         image_size=None):
    """torchvision's ``paste_masks_in_image`` with a static output: ``masks`` (D, M, M)
    probabilities (or logits), ``boxes`` (D, 4) xyxy in the image, ``shape`` the static (H, W)
    of the result (D, H, W); ``image_size`` the (h, w) <= ``shape`` of the image itself (traced;
    default ``shape``), beyond which torchvision's image ends and the result is 0.  A batch:
    masks (N, D, M, M), boxes (N, D, 4), image_size (N, 2) -> (N, D, H, W).  Threshold (0.5 in
    torchvision's references) is the caller's."""
    shape = (int(shape[0]), int(shape[1]))
    if masks.ndim not in (3, 4) or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"paste_masks_in_image: masks must be (D, M, M) or (N, D, M, M), got "
                         f"shape {masks.shape}")
    if boxes.shape != (*masks.shape[:-2], 4):
        raise ValueError(f"paste_masks_in_image: boxes must be {(*masks.shape[:-2], 4)} (one "
                         f"xyxy box per mask), got shape {boxes.shape}")
    lead = masks.shape[:-3]
    if image_size is None:
        image_size = jnp.broadcast_to(jnp.asarray(shape, jnp.int32), (*lead, 2))
    image_size = jnp.asarray(image_size, jnp.int32)
    if image_size.shape != (*lead, 2):
        raise ValueError(f"paste_masks_in_image: image_size must be {(*lead, 2)}, got shape "
                         f"{image_size.shape}")
    paste = lambda mk, bx, size: _paste(mk, bx, shape, padding, size)
    if masks.ndim == 4:
        paste = jax.vmap(paste)
    return paste(masks, boxes, image_size)
