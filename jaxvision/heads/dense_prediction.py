"""What RetinaNet- and FCOS-style heads share: a conv tower run over every pyramid level with
the same weights, per-anchor predictors flattened in torchvision's (y, x, anchor) order, and
post-processing of per-level candidates with static shapes."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from jaxvision import ops
from jaxvision.layers import Conv2d

NORMAL_001 = nn.initializers.normal(0.01)


def per_anchor(y: jax.Array, num_anchors: int) -> jax.Array:
    """(N, H, W, A * K) -> (N, H * W * A, K): channel a * K + j is (anchor a, output j), torch's
    view/permute/reshape of a dense head's output."""
    n, h, w, c = y.shape
    return y.reshape(n, h * w * num_anchors, c // num_anchors)


def prior_bias(probability: float):
    """The classification bias that starts every anchor at ``probability`` (focal loss paper)."""
    return nn.initializers.constant(-math.log((1 - probability) / probability))


class DenseTower(nn.Module):
    """``num_convs`` conv3x3 (+GroupNorm(32)) + ReLU blocks, then one 3x3 predictor per entry of
    ``predictors`` ((name, channels per anchor, bias init)).

    ``layout`` names the blocks as torchvision's state_dict does: "nested" for
    ``conv.i.0`` / ``conv.i.1`` (Conv2dNormActivation, RetinaNet), "flat" for ``conv.3i`` /
    ``conv.3i+1`` (a plain Sequential of conv, norm, ReLU, FCOS).
    """

    predictors: tuple
    num_anchors: int
    group_norm: bool = False
    conv_bias: bool = True
    layout: str = "nested"
    num_convs: int = 4
    dtype: Any = None

    def _names(self, i):
        return (f"conv_{i}_0", f"conv_{i}_1") if self.layout == "nested" else (
            f"conv_{3 * i}", f"conv_{3 * i + 1}")

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> dict:
        c = features[0].shape[-1]
        blocks = []
        for i in range(self.num_convs):
            conv_name, norm_name = self._names(i)
            conv = Conv2d(c, 3, 1, 1, bias=self.conv_bias, dtype=self.dtype,
                          kernel_init=NORMAL_001, name=conv_name)
            norm = nn.GroupNorm(32, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                                param_dtype=jnp.float32, name=norm_name) if self.group_norm else None
            blocks.append((conv, norm))
        heads = [(name, k, Conv2d(self.num_anchors * k, 3, 1, 1, bias=True, dtype=self.dtype,
                                  kernel_init=NORMAL_001, bias_init=init, name=name))
                 for name, k, init in self.predictors]
        outs = {name: [] for name, _, _ in self.predictors}
        for x in features:
            for conv, norm in blocks:
                x = conv(x)
                x = nn.relu(norm(x) if norm is not None else x)
            for name, _, predictor in heads:
                outs[name].append(per_anchor(predictor(x), self.num_anchors))
        return {name: jnp.concatenate(v, axis=1).astype(jnp.float32) for name, v in outs.items()}


def level_splits(anchors_per_level) -> list[int]:
    return [int(s) for s in np.cumsum([a.shape[0] for a in anchors_per_level])[:-1]]


def postprocess(scores, deltas, anchors_per_level, image_sizes, decode: Callable,
                score_thresh: float, nms_thresh: float, detections_per_img: int,
                topk_candidates: int) -> dict:
    """torchvision's ``postprocess_detections`` for dense detectors, with static shapes.

    ``scores`` (N, A, K) probabilities, ``deltas`` (N, A, 4).  Per level: scores above
    ``score_thresh``, the best ``topk_candidates``, decoded and clipped to the image's (resized,
    unpadded) size; then class-wise NMS over all levels.  Returns ``boxes`` (N, D, 4),
    ``scores`` (N, D), ``labels`` (N, D) sorted by score, padded past ``count`` (N,) with zeros
    and label -1, D = ``detections_per_img``.
    """
    splits = level_splits(anchors_per_level)

    def level(s, d, anchors, image_size):
        num_classes = s.shape[-1]
        s = s.reshape(-1)
        top, idx = jax.lax.top_k(jnp.where(s > score_thresh, s, -1.0),
                                 min(topk_candidates, s.shape[0]))
        anchor_idx = idx // num_classes
        boxes = decode(d[anchor_idx], jnp.asarray(anchors)[anchor_idx])
        return (ops.clip_boxes_to_image(boxes, image_size), top, idx % num_classes,
                top > score_thresh)

    def one(s, d, image_size):
        parts = [level(sl, dl, a, image_size) for sl, dl, a in
                 zip(jnp.split(s, splits), jnp.split(d, splits), anchors_per_level)]
        boxes, top, labels, ok = (jnp.concatenate(p) for p in zip(*parts))
        keep, count = ops.batched_nms(boxes, top, labels, nms_thresh, detections_per_img, ok)
        real = keep >= 0
        k = jnp.clip(keep, 0)
        return {"boxes": jnp.where(real[:, None], boxes[k], 0.0),
                "scores": jnp.where(real, top[k], 0.0),
                "labels": jnp.where(real, labels[k], -1), "count": count}

    return jax.vmap(one)(scores, deltas, jnp.asarray(image_sizes))
