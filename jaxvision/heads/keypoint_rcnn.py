"""Keypoint R-CNN's keypoint branch (torchvision's ``models/detection/keypoint_rcnn.py`` and the
keypoint parts of ``roi_heads.py``), with static shapes: RoIs padded with a ``valid`` mask.

``keypoint_rcnn_heads``: torchvision's ``KeypointRCNNHeads`` (eight 3x3 conv 512 + ReLU), a
flat ``nn.Sequential`` in torch (``keypoint_head.0``, ``keypoint_head.2``, ...), so a function
that makes ``{name}_{2i}`` children of its caller (see ``mask_rcnn_heads``).
``KeypointRCNNPredictor``: ``kps_score_lowres`` (4x4 / 2 transposed conv, padding 1) then
bilinear x2 (align_corners=False): 14x14 RoI maps -> 56x56 heatmaps, one per keypoint.

Training: ``keypoints_to_heatmap`` (each visible keypoint inside its RoI becomes the index of
its heatmap cell) and ``keypointrcnn_loss`` (cross entropy over the 56 x 56 cells, mean over the
valid keypoints).  Inference: ``heatmaps_to_keypoints``: torchvision resizes each RoI's heatmaps
bicubically to the RoI's ceil'd size and takes the argmax; here the resize runs at a static
bound (``max_size``, e.g. the padded image) with the cells past the RoI's size masked, so the
argmax, its tie-breaking (first in row-major order) and the score (the resized map's maximum)
are torchvision's.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.conv import Conv2d, ConvTranspose2d, kaiming_normal_fan_out
from jaxvision.layers.interpolate import cubic_taps, interpolate
from jaxvision.ops.roi_align import rounded

KEYPOINT_LAYERS = (512,) * 8
# torchvision.models._meta._COCO_PERSON_KEYPOINT_NAMES, COCO's person keypoints in order
COCO_PERSON_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
NUM_KEYPOINTS = len(COCO_PERSON_KEYPOINT_NAMES)


def keypoint_rcnn_heads(x, layers: Sequence[int] = KEYPOINT_LAYERS, name: str = "keypoint_head",
                        *, dtype: Any = None):
    """torchvision's ``KeypointRCNNHeads(in, layers)`` on pooled RoI maps (..., 14, 14, C) ->
    (..., 14, 14, layers[-1]).  Call inside a compact method."""
    if x.ndim < 4:
        raise ValueError(f"keypoint_rcnn_heads: expected RoI maps (..., H, W, C), got shape "
                         f"{x.shape}")
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    for i, features in enumerate(layers):
        x = nn.relu(Conv2d(features, 3, 1, 1, bias=True, dtype=dtype,
                           kernel_init=kaiming_normal_fan_out, bias_init=nn.initializers.zeros,
                           name=f"{name}_{2 * i}")(x))
    return x.reshape(*lead, *x.shape[1:])


class KeypointRCNNPredictor(nn.Module):
    """torchvision's ``KeypointRCNNPredictor(in, num_keypoints)``: (..., 14, 14, C) -> heatmap
    logits (..., 56, 56, num_keypoints)."""

    num_keypoints: int = NUM_KEYPOINTS
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        if x.ndim < 4:
            raise ValueError(f"KeypointRCNNPredictor: expected RoI maps (..., H, W, C), got "
                             f"shape {x.shape}")
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        x = ConvTranspose2d(self.num_keypoints, (4, 4), (2, 2), (1, 1), dtype=self.dtype,
                            name="kps_score_lowres")(x)
        x = interpolate(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=False)
        return x.reshape(*lead, *x.shape[1:])


def _check_keypoints(keypoints, what: str, num_keypoints: Optional[int] = None):
    if keypoints.ndim < 2 or keypoints.shape[-1] != 3 or (
            num_keypoints is not None and keypoints.shape[-2] != num_keypoints):
        k = "K" if num_keypoints is None else num_keypoints
        raise ValueError(f"{what}: keypoints must be (..., {k}, 3) (x, y, visibility per "
                         f"keypoint), got shape {keypoints.shape}")


def keypoints_to_heatmap(keypoints, rois, heatmap_size: int):
    """torchvision's ``keypoints_to_heatmap``: ``keypoints`` (..., K, 3) (x, y, visibility) of
    each RoI's ground truth, ``rois`` (..., 4) -> (cell index y * S + x (..., K) int32, valid
    (..., K): visible and inside the RoI).  A keypoint on the RoI's right or bottom edge goes to
    the last cell."""
    _check_keypoints(keypoints, "keypoints_to_heatmap")
    if rois.shape != (*keypoints.shape[:-2], 4):
        raise ValueError(f"keypoints_to_heatmap: rois must be {(*keypoints.shape[:-2], 4)} "
                         f"(one xyxy box per keypoint set), got shape {rois.shape}")
    rois = jnp.asarray(rois, jnp.float32)[..., None, :]
    keypoints = jnp.asarray(keypoints, jnp.float32)
    # torch's int / tensor is tensor.reciprocal() * int: two roundings
    scale_x = (1.0 / (rois[..., 2] - rois[..., 0])) * heatmap_size
    scale_y = (1.0 / (rois[..., 3] - rois[..., 1])) * heatmap_size
    x, y = keypoints[..., 0], keypoints[..., 1]
    cx = jnp.floor((x - rois[..., 0]) * scale_x).astype(jnp.int32)
    cy = jnp.floor((y - rois[..., 1]) * scale_y).astype(jnp.int32)
    cx = jnp.where(x == rois[..., 2], heatmap_size - 1, cx)
    cy = jnp.where(y == rois[..., 3], heatmap_size - 1, cy)
    inside = (cx >= 0) & (cy >= 0) & (cx < heatmap_size) & (cy < heatmap_size)
    valid = inside & (keypoints[..., 2] > 0)
    return jnp.where(valid, cy * heatmap_size + cx, 0), valid


def keypointrcnn_loss(keypoint_logits, proposals, gt_keypoints, matched_idxs, valid):
    """torchvision's ``keypointrcnn_loss`` on padded positives: cross entropy of each valid
    keypoint's heatmap (logits over the S x S cells) against its cell, the mean over valid
    keypoints of valid proposals (0 when there are none, as torchvision's).

    ``keypoint_logits`` (N, P, S, S, K) from :class:`KeypointRCNNPredictor`; ``proposals``
    (N, P, 4) the positive proposals, ``matched_idxs`` (N, P) their ground truth, ``valid``
    (N, P); ``gt_keypoints`` (N, G, K, 3)."""
    if keypoint_logits.ndim != 5 or keypoint_logits.shape[2] != keypoint_logits.shape[3]:
        raise ValueError(f"keypointrcnn_loss: keypoint_logits must be (N, P, S, S, K) with "
                         f"square heatmaps, got shape {keypoint_logits.shape}")
    n, p, s, _, k = keypoint_logits.shape
    if proposals.shape != (n, p, 4) or matched_idxs.shape != (n, p) or valid.shape != (n, p):
        raise ValueError(f"keypointrcnn_loss: proposals {proposals.shape}, matched_idxs "
                         f"{matched_idxs.shape} and valid {valid.shape} must be (N, P[, 4]) = "
                         f"{(n, p)}")
    if gt_keypoints.ndim != 4 or gt_keypoints.shape[0] != n:
        raise ValueError(f"keypointrcnn_loss: gt_keypoints must be (N, G, {k}, 3) with N = "
                         f"{n}, got shape {gt_keypoints.shape}")
    _check_keypoints(gt_keypoints, "keypointrcnn_loss", k)
    idx = jnp.clip(matched_idxs, 0, gt_keypoints.shape[1] - 1)
    kp = jnp.take_along_axis(gt_keypoints, idx[:, :, None, None], axis=1)
    targets, ok = keypoints_to_heatmap(jax.lax.stop_gradient(kp), proposals, s)
    ok = ok & valid[..., None]
    logits = jnp.moveaxis(keypoint_logits.astype(jnp.float32), -1, 2).reshape(n, p, k, s * s)
    nll = (jax.nn.logsumexp(logits, -1)
           - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0])
    return jnp.where(ok, nll, 0.0).sum() / jnp.maximum(ok.sum(), 1)


def _resize_matrix(index, weights, n_in: int):
    """The (out, n_in) matrix of an axis's four taps (duplicated clamped taps add up)."""
    rows = [jax.nn.one_hot(i, n_in, dtype=jnp.float32) * w[:, None]
            for i, w in zip(index, weights)]
    return ((rows[0] + rows[1]) + rows[2]) + rows[3]


def _first_argmax(flat):
    """jnp.argmax's answer (the first maximum) through a max and a min, two plain reductions
    that XLA:CPU runs ~7x faster than argmax's variadic one."""
    top = flat.max(-1, keepdims=True)
    iota = jnp.arange(flat.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(flat == top, iota, flat.shape[-1]), -1), top[..., 0]


def _roi_keypoints(maps, roi, bound):
    """One RoI: ``maps`` (K, S, S), ``roi`` (4,) -> ((K, 3), (K,))."""
    k, s, _ = maps.shape
    bh, bw = bound
    width = jnp.maximum(roi[2] - roi[0], 1.0)
    height = jnp.maximum(roi[3] - roi[1], 1.0)
    wc, hc = jnp.ceil(width).astype(jnp.int32), jnp.ceil(height).astype(jnp.int32)
    # the separable resize as two matmuls (along x, then y, as torch): the taps' weights in
    # dense matrices, exact zeros elsewhere.  Gathers of the taps do 14x fewer flops but ran
    # 2-10x slower on XLA:CPU (and matmuls are what an accelerator is for)
    along_x = _resize_matrix(*cubic_taps(jnp.arange(bw), s, wc), s)  # (bw, S)
    along_y = _resize_matrix(*cubic_taps(jnp.arange(bh), s, hc), s)  # (bh, S)
    hi = jax.lax.Precision.HIGHEST
    resized = jnp.matmul(along_y, jnp.matmul(maps, along_x.T, precision=hi), precision=hi)
    inside = (jnp.arange(bh) < hc)[:, None] & (jnp.arange(bw) < wc)[None, :]
    pos, score = _first_argmax(jnp.where(inside, resized, -jnp.inf).reshape(k, bh * bw))
    x_int, y_int = pos % bw, pos // bw
    x = rounded((x_int.astype(jnp.float32) + 0.5) * (width / wc.astype(jnp.float32)), roi[0])
    y = rounded((y_int.astype(jnp.float32) + 0.5) * (height / hc.astype(jnp.float32)), roi[1])
    xy = jnp.stack([x + roi[0], y + roi[1], jnp.ones_like(x)], -1)
    over = (hc > bh) | (wc > bw)  # the static bound is too small for this RoI: say so
    return jnp.where(over, jnp.nan, xy), jnp.where(over, jnp.nan, score)


def heatmaps_to_keypoints(maps, rois, max_size: Sequence[int], batch_size: Optional[int] = None):
    """torchvision's ``heatmaps_to_keypoints``: ``maps`` (..., S, S, K) heatmap logits,
    ``rois`` (..., 4) xyxy -> (keypoints (..., K, 3) as (x, y, 1), scores (..., K)).

    ``max_size`` (h, w): the static bound of the RoIs' ceil'd sizes (a RoI inside the padded
    image needs no more than the image's size); a RoI larger than it gets NaN.  The RoIs are
    resized ``batch_size`` at a time (default: ~64 MB of resized maps)."""
    if maps.ndim < 4 or maps.shape[-3] != maps.shape[-2]:
        raise ValueError(f"heatmaps_to_keypoints: maps must be (..., S, S, K), got shape "
                         f"{maps.shape}")
    if rois.shape != (*maps.shape[:-3], 4):
        raise ValueError(f"heatmaps_to_keypoints: rois must be {(*maps.shape[:-3], 4)} (one "
                         f"xyxy box per heatmap set), got shape {rois.shape}")
    bound = (int(max_size[0]), int(max_size[1]))
    lead, (s, k) = maps.shape[:-3], maps.shape[-2:]
    flat_maps = jnp.moveaxis(maps.reshape(-1, s, s, k).astype(jnp.float32), -1, 1)
    flat_rois = rois.reshape(-1, 4).astype(jnp.float32)
    if batch_size is None:
        batch_size = max(1, min(flat_rois.shape[0], 2 ** 24 // (k * bound[0] * bound[1])))
    xy, scores = jax.lax.map(lambda a: _roi_keypoints(*a, bound), (flat_maps, flat_rois),
                             batch_size=batch_size)
    return xy.reshape(*lead, k, 3), scores.reshape(*lead, k)
