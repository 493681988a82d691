"""``torch.nn.functional.interpolate`` on NHWC maps, index for index.

``jax.image.resize`` is not torch's rule: its nearest picks other source pixels at odd sizes and
it antialiases when shrinking.  Here the source indices and weights are computed on the host with
torch's own float32 formulas (shapes are static), then applied with gathers and a lerp, so the
result is torch's up to the order of float32 additions, and differentiable.

- ``nearest``: source index ``min(floor(i * (in / out)), in - 1)`` (torch's legacy 'nearest').
- ``bilinear``: align_corners=False: ``src = (in / out) * (i + 0.5) - 0.5`` clamped at 0;
  align_corners=True: ``src = i * (in - 1) / (out - 1)``.  No antialiasing.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import jax.numpy as jnp

MODES = ("nearest", "bilinear")


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    scale = np.float32(n_in) / np.float32(n_out)  # torch: (float) input_size / output_size
    src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def _linear_weights(n_in: int, n_out: int, align_corners: bool):
    """(i0, i1, w1) such that out[i] = (1 - w1) * in[i0] + w1 * in[i1], as torch computes them."""
    i = np.arange(n_out, dtype=np.float32)
    if align_corners:
        scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
        src = i * scale
    else:
        scale = np.float32(n_in) / np.float32(n_out)
        # torch's build contracts ``scale * (i + 0.5) - 0.5`` into one fused multiply-add
        # (measured: emulating it halves the error); the float64 product of two float32 values
        # is exact, so one rounding to float32 is what the FMA gives
        src = (np.float64(scale) * (i.astype(np.float64) + 0.5) - 0.5).astype(np.float32)
        src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, w1


def _lerp_axis(x, axis: int, n_out: int, align_corners: bool):
    n_in = x.shape[axis]
    if n_in == n_out:
        return x  # either corner rule then maps i to i with weight 0
    i0, i1, w1 = _linear_weights(n_in, n_out, align_corners)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w1 = jnp.asarray(w1.reshape(shape), x.dtype)
    a, b = jnp.take(x, i0, axis=axis), jnp.take(x, i1, axis=axis)
    return a * (1 - w1) + b * w1


def interpolate(x, size: Union[int, Sequence[int]], mode: str = "nearest",
                align_corners: bool = False):
    """Resize NHWC ``x`` to ``size`` (H, W) the way ``F.interpolate`` resizes NCHW."""
    if x.ndim != 4:
        raise ValueError(f"interpolate expected NHWC (4-D) input, got shape {tuple(x.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if oh <= 0 or ow <= 0:
        raise ValueError(f"output size must be positive, got {(oh, ow)}")
    if mode == "nearest":
        if align_corners:
            raise ValueError("align_corners only applies to mode='bilinear' (as in torch)")
        h, w = x.shape[1], x.shape[2]
        if (h, w) != (oh, ow):
            x = jnp.take(x, _nearest_index(h, oh), axis=1) if h != oh else x
            x = jnp.take(x, _nearest_index(w, ow), axis=2) if w != ow else x
        return x
    # bilinear is separable: rows then columns (torch mixes both in one pass; the difference is
    # float32 rounding only)
    x = _lerp_axis(x, 1, oh, align_corners)
    return _lerp_axis(x, 2, ow, align_corners)


# Output sizes known only at run time (a box's size): the same rules traced with jnp, for
# output positions ``dst`` (ints) of an axis of static length ``n_in`` resized to ``n_out``
# (traced ints broadcastable to ``dst``).  Positions at or past ``n_out`` get indices inside the
# input and finite weights: the caller masks them.

def _source_index(dst, n_in: int, n_out):
    """torch's ``area_pixel_compute_source_index`` (align_corners=False) with the scale of
    ``F.interpolate(size=...)``, ``(float) in / out``."""
    scale = jnp.float32(n_in) / jnp.asarray(n_out).astype(jnp.float32)
    return scale * (jnp.asarray(dst).astype(jnp.float32) + 0.5) - 0.5


def linear_taps(dst, n_in: int, n_out):
    """Bilinear, align_corners=False (torch's ``compute_source_index_and_lambda``):
    ``((i0, i1), (w0, w1))`` with out[dst] = w0 * in[i0] + w1 * in[i1]."""
    src = jnp.maximum(_source_index(dst, n_in, n_out), 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
    w1 = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
    i1 = jnp.where(i0 < n_in - 1, i0 + 1, i0)
    same = jnp.asarray(n_out) == n_in  # torch copies: index dst, weights (1, 0)
    dst = jnp.asarray(dst, jnp.int32)
    i0, i1 = jnp.where(same, dst, i0), jnp.where(same, dst, i1)
    w1 = jnp.where(same, 0.0, w1)
    return (i0, i1), (1.0 - w1, w1)


def _cubic1(x, a):
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic2(x, a):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def cubic_taps(dst, n_in: int, n_out):
    """Bicubic, align_corners=False, A = -0.75 (torch's ``HelperInterpCubic``): four
    indices (clamped to the input) and weights, each a tuple of arrays like ``dst``."""
    src = _source_index(dst, n_in, n_out)  # not clamped at 0: cubic reads index -1
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
    t = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
    a = jnp.float32(-0.75)
    u = 1.0 - t
    weights = (_cubic2(t + 1.0, a), _cubic1(t, a), _cubic1(u, a), _cubic2(u + 1.0, a))
    index = tuple(jnp.clip(i0 - 1 + j, 0, n_in - 1) for j in range(4))
    return index, weights
