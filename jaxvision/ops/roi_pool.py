"""torchvision's ``roi_pool`` (Fast R-CNN's RoIPool), jittable with static shapes.

As torchvision's kernel: box corners times ``spatial_scale`` rounded half away from zero to
map pixels, the RoI at least 1x1 and inclusive of its end pixel, bin ``ph`` spans rows
floor(ph * bin) .. ceil((ph + 1) * bin) - 1 from the RoI's start, clipped to the map; the output
is the bin's maximum, 0 for a bin left empty.  Each bin reads a window of static size
(``max_bin``, by default enough for every RoI inside the map) with the pixels past its end
masked; a bin larger than the window gives NaN (loud, never silently different).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from jaxvision.ops.roi_align import _pair, check_roi_inputs, exact_div


def _bins(start, length, bins: int, window: int, size: int):
    """(K, bins, window) map indices of each bin's rows (columns), whether each lies in the
    bin, and whether a bin overflows the window."""
    bin_size = exact_div(length.astype(jnp.float32), bins)
    p = jnp.arange(bins, dtype=jnp.float32)
    lo = jnp.floor(p * bin_size[:, None]).astype(jnp.int32) + start[:, None]
    hi = jnp.ceil((p + 1) * bin_size[:, None]).astype(jnp.int32) + start[:, None]
    lo, hi = jnp.clip(lo, 0, size), jnp.clip(hi, 0, size)
    idx = lo[..., None] + jnp.arange(window, dtype=jnp.int32)
    return jnp.minimum(idx, size - 1), idx < hi[..., None], (hi - lo) > window


def default_max_bin(map_size: Sequence[int], output_size) -> tuple[int, int]:
    """The window that holds every bin of a RoI inside a map of ``map_size`` (its side at
    most the map's plus one pixel: ceil(bin) + 1 rows, at most the map's)."""
    oh, ow = _pair(output_size)
    return (min(map_size[0], math.ceil((map_size[0] + 1) / oh) + 1),
            min(map_size[1], math.ceil((map_size[1] + 1) / ow) + 1))


def roi_pool(features, boxes, output_size: Union[int, Sequence[int]],
             spatial_scale: float = 1.0, valid=None,
             max_bin: Optional[Union[int, Sequence[int]]] = None):
    """``torchvision.ops.roi_pool`` for NHWC ``features`` (N, H, W, C) and ``boxes``
    (N, R, 4) xyxy padded per image (``valid`` (N, R) zeroes the padding's outputs).
    Returns (N, R, oh, ow, C)."""
    check_roi_inputs("roi_pool", features, boxes)
    n, h, w, c = features.shape
    oh, ow = _pair(output_size)
    kh, kw = default_max_bin((h, w), (oh, ow)) if max_bin is None else _pair(max_bin)
    b = jax.lax.stop_gradient(boxes.astype(jnp.float32)) * spatial_scale
    b = (jnp.sign(b) * jnp.floor(jnp.abs(b) + 0.5)).astype(jnp.int32)  # C's round()
    x1, y1, x2, y2 = (b[..., j].reshape(-1) for j in range(4))
    rows, row_in, row_over = _bins(y1, jnp.maximum(y2 - y1 + 1, 1), oh, kh, h)
    cols, col_in, col_over = _bins(x1, jnp.maximum(x2 - x1 + 1, 1), ow, kw, w)
    img = jnp.repeat(jnp.arange(n, dtype=jnp.int32), boxes.shape[1])
    vals = features[img[:, None, None, None, None], rows[:, :, :, None, None],
                    cols[:, None, None, :, :]]  # (K, oh, kh, ow, kw, C)
    inside = row_in[:, :, :, None, None] & col_in[:, None, None, :, :]
    out = jnp.max(jnp.where(inside[..., None], vals, -jnp.inf), axis=(2, 4))
    out = jnp.where(jnp.isneginf(out), 0.0, out)  # an empty bin
    over = row_over[:, :, None] | col_over[:, None, :]
    out = jnp.where(over[..., None], jnp.nan, out).astype(features.dtype)
    out = out.reshape(n, boxes.shape[1], oh, ow, c)
    if valid is not None:
        out = jnp.where(valid[:, :, None, None, None], out, 0.0)
    return out
