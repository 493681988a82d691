"""torchvision's ``roi_align`` (Mask R-CNN's RoIAlign), jittable with static shapes.

Each output bin averages bilinear samples on a regular grid inside it, exactly as torchvision's
CPU/CUDA kernel does, trap by trap:

* a sample with y < -1 or y > H (x likewise) contributes 0, but still counts in the average;
  one inside is clamped to >= 0, and at or past the last row reads the last row (weight 1);
* ``aligned=False`` (torchvision's default, its detection models') has no half-pixel shift and
  forces every RoI to at least 1x1 map pixels; ``aligned=True`` shifts by -0.5 and does not;
* ``sampling_ratio > 0`` takes that many samples per bin side; ``-1`` is adaptive per RoI,
  ``ceil(roi side / output side)``.  The adaptive grid is bounded statically (``max_sampling``,
  by default enough for every RoI inside the map) and the unused samples are masked; a RoI that
  needs more samples than the bound gives NaN (loud, never silently different).

The map is flattened to (pixels, C); each (sample, neighbour) of every bin of every RoI is a
gather of rows, weighted and added elementwise, so XLA fuses them all into one loop (no
(RoIs, samples, C) buffer: 1000 RoIs of 7x7 on a 200x304x256 map take 0.25 s here, torchvision
1.1 s).  The gradient is a custom VJP that scatter-adds every sample into one buffer, as
torchvision's backward does.  Boxes get no gradient, as in torchvision.  The arithmetic is the
kernel's, rounding included (see ``exact_div`` and ``rounded``): the forward equals torchvision's
to float32 ulps.  ``sample_roi_grid`` is the shared core: ``MultiScaleRoIAlign`` runs it once
over all pyramid levels at once.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def exact_div(x, d):
    """``x / d`` as a true division: XLA rewrites a division by a constant or by a broadcast
    scalar into a product with the rounded reciprocal (x / 7 -> x * 0.142857149), an ulp off the
    kernel's quotient, which moves a floor or ceil by one (a whole row of roi_pool) and sample
    positions slightly.  A divisor of x's full shape behind a barrier stays a division."""
    x, d = jnp.broadcast_arrays(x, jnp.asarray(d, x.dtype))
    return x / jax.lax.optimization_barrier(d)


def rounded(product, anchor):
    """``product`` rounded to its dtype on its own before the sum it feeds: XLA:CPU lets LLVM
    fuse a product and a sum into one FMA, which rounds once where torchvision's kernel rounds
    twice; an ulp of a sample's position changes its value by ~1e-5 on a 64-pixel map.  The
    bits pass through an integer xor with isnan(anchor) (0 unless the result is NaN anyway),
    which the compiler cannot see through."""
    bits = jax.lax.bitcast_convert_type(product, jnp.int32)
    bits = bits ^ jnp.isnan(anchor).astype(jnp.int32)
    return jax.lax.bitcast_convert_type(bits, product.dtype)


def _axis(start, bin_size, grid, bins: int, max_grid: int, size):
    """One axis of the sampling grid for K RoIs: indices (K, bins, max_grid, 2) of the two
    neighbouring rows (columns) and their bilinear weights, 0 for masked or outside samples."""
    b = bin_size[:, None, None]
    p = jnp.arange(bins, dtype=b.dtype)[None, :, None]
    i = jnp.arange(max_grid, dtype=b.dtype)[None, None, :]
    g = grid[:, None, None]
    # the kernel's order of operations: start + p * bin + ((i + .5) * bin) / grid
    y = (start[:, None, None] + rounded(p * b, start[:, None, None])
         + exact_div((i + 0.5) * b, g.astype(b.dtype)))
    size = size[:, None, None]
    keep = (y >= -1.0) & (y <= size.astype(b.dtype)) & (i < g.astype(b.dtype))
    y = jnp.maximum(y, 0.0)
    top = y >= (size - 1).astype(b.dtype)
    low = jnp.where(top, size - 1, jnp.floor(jnp.minimum(y, size.astype(b.dtype))).astype(
        jnp.int32))
    high = jnp.where(top, size - 1, low + 1)
    frac = jnp.where(top, 0.0, y - low.astype(b.dtype))
    w_low = jnp.where(keep, 1.0 - frac, 0.0)
    w_high = jnp.where(keep, frac, 0.0)
    return jnp.stack([low, high], -1), jnp.stack([w_low, w_high], -1)


def _over_samples(my: int, mx: int, body, init):
    """``body(iy, ix, acc)`` over the sampling grid: unrolled for torchvision's detectors
    (sampling_ratio 2: 4 samples, one fusion), a loop for a large adaptive bound, so memory stays
    one sample's."""
    if my * mx <= 16:
        for iy in range(my):
            for ix in range(mx):
                init = body(iy, ix, init)
        return init
    return jax.lax.fori_loop(0, my * mx, lambda t, acc: body(t // mx, t % mx, acc), init)


def _corners(rows, cols, wy, wx, iy, ix):
    """The four neighbours of sample (iy, ix) of every bin: (flat index, weight), each
    (K, oh, ow), in the kernel's order w1 v1 + w2 v2 + w3 v3 + w4 v4."""
    for a in range(2):
        for b in range(2):
            yield (rows[:, :, None, iy, a] + cols[:, None, :, ix, b],
                   wy[:, :, None, iy, a] * wx[:, None, :, ix, b])


@jax.custom_vjp
def _bilinear_sum(table, rows, cols, wy, wx):
    """Sum over the grid of the bilinear samples: (K, oh, ow, C).  One gather per neighbour,
    added elementwise, so XLA fuses them all into one loop (no (K, samples, C) buffer)."""
    def body(iy, ix, acc):
        terms = [weight[..., None].astype(table.dtype) * table[index]
                 for index, weight in _corners(rows, cols, wy, wx, iy, ix)]
        return acc + (((terms[0] + terms[1]) + terms[2]) + terms[3])

    shape = (rows.shape[0], rows.shape[1], cols.shape[1], table.shape[-1])
    return _over_samples(rows.shape[2], cols.shape[2], body, jnp.zeros(shape, table.dtype))


def _bilinear_sum_fwd(table, rows, cols, wy, wx):
    return _bilinear_sum(table, rows, cols, wy, wx), (table.shape, rows, cols, wy, wx)


def _bilinear_sum_bwd(res, grad):
    """torchvision's backward: each sample adds weight x output gradient to its neighbours, all
    scatter-added into one buffer in place (autodiff would make a map-sized zero buffer per
    neighbour and add them up)."""
    shape, rows, cols, wy, wx = res

    def body(iy, ix, acc):
        for index, weight in _corners(rows, cols, wy, wx, iy, ix):
            acc = acc.at[index].add(weight[..., None].astype(grad.dtype) * grad)
        return acc

    g = _over_samples(rows.shape[2], cols.shape[2], body, jnp.zeros(shape, grad.dtype))
    zero_int = lambda x: np.zeros(x.shape, jax.dtypes.float0)
    return g, zero_int(rows), zero_int(cols), jnp.zeros_like(wy), jnp.zeros_like(wx)


_bilinear_sum.defvjp(_bilinear_sum_fwd, _bilinear_sum_bwd)


def sample_roi_grid(table, base, height, width, boxes, scale, output_size, sampling_ratio: int,
                    aligned: bool, max_sampling: tuple[int, int]):
    """RoIAlign of K RoIs over maps stored flat in ``table`` (pixels, C): RoI k reads the
    ``height[k]`` x ``width[k]`` map whose pixel (0, 0) is row ``base[k]``, with box
    ``boxes[k]`` (xyxy) times ``scale[k]``.  Returns (K, oh, ow, C)."""
    oh, ow = output_size
    # sample positions and weights in float32 whatever the maps' dtype (bfloat16 would move
    # samples by whole pixels on a large map)
    boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
    offset = 0.5 if aligned else 0.0
    scaled = boxes * jnp.asarray(scale, jnp.float32)[..., None]
    x1, y1, x2, y2 = (rounded(scaled[:, j], scaled[:, j]) - offset for j in range(4))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # malformed RoIs become 1x1
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    bin_h, bin_w = exact_div(roi_h, oh), exact_div(roi_w, ow)
    if sampling_ratio > 0:
        grid_h = grid_w = jnp.full(boxes.shape[:1], sampling_ratio, jnp.int32)
        my = mx = sampling_ratio
    else:
        grid_h = jnp.ceil(bin_h).astype(jnp.int32)
        grid_w = jnp.ceil(bin_w).astype(jnp.int32)
        my, mx = max_sampling
    count = jnp.maximum(grid_h * grid_w, 1).astype(table.dtype)  # divides the maps' dtype
    ys, wy = _axis(y1, bin_h, grid_h, oh, my, height)  # (K, oh, my, 2)
    xs, wx = _axis(x1, bin_w, grid_w, ow, mx, width)  # (K, ow, mx, 2)
    rows = base[:, None, None, None] + ys * width[:, None, None, None]  # (K, oh, my, 2)
    out = _bilinear_sum(table, rows, xs, wy, wx)
    out = exact_div(out, count[:, None, None, None])
    if sampling_ratio <= 0:  # more samples needed than the static bound: say so
        over = (grid_h > my) | (grid_w > mx)
        out = jnp.where(over[:, None, None, None], jnp.nan, out)
    return out


def check_roi_inputs(op: str, features, boxes):
    if features.ndim != 4:
        raise ValueError(f"{op}: features must be NHWC (N, H, W, C), got shape "
                         f"{features.shape}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
        raise ValueError(f"{op}: boxes must be (N, R, 4) with N = {features.shape[0]} "
                         f"(the features' batch), got shape {boxes.shape}")


def default_max_sampling(map_size: Sequence[int], output_size) -> tuple[int, int]:
    """The adaptive grid's bound that covers every RoI lying inside a map of ``map_size``
    (its side at most the map's: ceil(side / output side) samples)."""
    oh, ow = _pair(output_size)
    return max(1, math.ceil(map_size[0] / oh)), max(1, math.ceil(map_size[1] / ow))


def roi_align(features, boxes, output_size: Union[int, Sequence[int]],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False,
              valid=None, max_sampling: Optional[Union[int, Sequence[int]]] = None):
    """``torchvision.ops.roi_align`` for NHWC ``features`` (N, H, W, C) and ``boxes`` (N, R, 4)
    xyxy in image pixels, padded per image (``valid`` (N, R) zeroes the padding's outputs).
    Returns (N, R, oh, ow, C).  ``max_sampling`` (per side, or one int) bounds the adaptive
    grid of ``sampling_ratio <= 0``; by default :func:`default_max_sampling` of the map."""
    check_roi_inputs("roi_align", features, boxes)
    n, h, w, c = features.shape
    r = boxes.shape[1]
    size = _pair(output_size)
    bound = (default_max_sampling((h, w), size) if max_sampling is None
             else _pair(max_sampling))
    full = lambda v: jnp.full((n * r,), v, jnp.int32)
    base = jnp.repeat(jnp.arange(n, dtype=jnp.int32) * (h * w), r)
    out = sample_roi_grid(features.reshape(n * h * w, c), base, full(h), full(w),
                          boxes.reshape(n * r, 4), spatial_scale, size, sampling_ratio,
                          aligned, bound)
    out = out.reshape(n, r, *size, c)
    if valid is not None:
        out = jnp.where(valid[:, :, None, None, None], out, 0.0)
    return out
