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
