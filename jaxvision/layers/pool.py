"""Pooling with torch's output sizes: ceil_mode, count_include_pad and adaptive bins (NHWC)."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxvision.layers import lowering


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_size(size, k, s, p, ceil_mode):
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # torch drops a last window that would start in the right padding
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pad_windows(x, k, s, p, ceil_mode, pad_value):
    """Pad left p, right p plus what ceil_mode needs: (padded x, torch's (oh, ow), (rh, rw))."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(k), _pair(s), _pair(p)
    oh = _out_size(x.shape[1], kh, sh, ph, ceil_mode)
    ow = _out_size(x.shape[2], kw, sw, pw, ceil_mode)
    rh = max((oh - 1) * sh + kh - x.shape[1] - ph, 0)
    rw = max((ow - 1) * sw + kw - x.shape[2] - pw, 0)
    padding = ((0, 0), (ph, rh), (pw, rw), (0, 0))
    x = jnp.pad(x, padding, constant_values=pad_value) if any(map(any, padding)) else x
    return x, (oh, ow), (rh, rw)


def _windows(x, init, op, k, s, p, ceil_mode, pad_value):
    """Pad, reduce, and crop to torch's size."""
    (kh, kw), (sh, sw) = _pair(k), _pair(s)
    x, (oh, ow), r = _pad_windows(x, k, s, p, ceil_mode, pad_value)
    y = lax.reduce_window(x, init, op, (1, kh, kw, 1), (1, sh, sw, 1), "VALID")
    return y[:, :oh, :ow], (oh, ow), r


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """torch's ``max_pool2d``; where the CPU rewrites are on (``lowering.rewrites_on``) its
    gradient is :func:`max_pool2d_first`'s, XLA's otherwise (the same values either way)."""
    if lowering.rewrites_on():
        return max_pool2d_first(x, kernel_size, stride, padding, ceil_mode)
    # python-scalar init values let lax recognise the max/add monoid, which has a gradient
    y, _, _ = _windows(x, -jnp.inf, lax.max, kernel_size, stride, padding, ceil_mode, -jnp.inf)
    return y


def max_pool2d_first(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """``max_pool2d`` whose gradient is the hand-written first-maximum scatter below."""
    stride = kernel_size if stride is None else stride
    x, out, _ = _pad_windows(x, kernel_size, stride, padding, ceil_mode, -jnp.inf)
    return _max_pool_first(_pair(kernel_size), _pair(stride), out, x)


# XLA:CPU lowers reduce_window-max's gradient (select_and_scatter) to a variadic reduce-window
# over index arrays: ~85 ms a resnet18 step at 32 px, ~250 ms for resnet50 at 224. This
# backward is kh*kw compares and selects on the output grid, then one add per tap into the
# stride phase that tap lands in, all element-wise, and one interleave of the phases.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _max_pool_first(k, s, out, x):
    """Max over VALID windows of an already padded ``x`` (cropped to ``out``); the gradient goes
    to the first maximum of each window in row-major order (torch's tie rule)."""
    y = lax.reduce_window(x, -jnp.inf, lax.max, (1, *k, 1), (1, *s, 1), "VALID")
    return y[:, :out[0], :out[1]]


def _max_pool_fwd(k, s, out, x):
    y = _max_pool_first(k, s, out, x)
    return y, (x, y)


def _max_pool_bwd(k, s, out, res, g):
    x, y = res
    (kh, kw), (sh, sw), (oh, ow) = k, s, out
    n, h, w, c = x.shape
    # input row o*sh + i is row o + i // sh of stride phase i % sh; each phase has hr rows
    hr, wr = -(-h // sh), -(-w // sw)
    phases = {}
    taken = None
    zero = jnp.zeros((), g.dtype)
    for t, v in enumerate(lowering.tap_views(x, kh, kw, s, (0, 0), (1, 1), oh, ow)):
        i, j = divmod(t, kw)
        hit = v == y
        if taken is not None:
            hit = hit & ~taken
        taken = hit if taken is None else taken | hit
        qi, qj = i // sh, j // sw
        part = jnp.pad(jnp.where(hit, g, zero),
                       ((0, 0), (qi, hr - oh - qi), (qj, wr - ow - qj), (0, 0)))
        key = (i % sh, j % sw)
        phases[key] = part if key not in phases else phases[key] + part
    grid = [[phases.get((a, b), jnp.zeros((n, hr, wr, c), g.dtype)) for b in range(sw)]
            for a in range(sh)]
    dx = jnp.stack([jnp.stack(row, axis=3) for row in grid], axis=2)  # (n, hr, sh, wr, sw, c)
    return (dx.reshape(n, hr * sh, wr * sw, c)[:, :h, :w],)


_max_pool_first.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    stride = kernel_size if stride is None else stride
    total, (oh, ow), (rh, rw) = _windows(x, 0.0, lax.add, kernel_size, stride, padding,
                                         ceil_mode, 0)
    # torch's divisor: the window clipped to the padded input (include) or to the input
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    h, w = x.shape[1], x.shape[2]
    if count_include_pad:
        ones = jnp.ones((1, h + 2 * ph, w + 2 * pw, 1), jnp.float32)
        ones = jnp.pad(ones, ((0, 0), (0, max(rh - ph, 0)), (0, max(rw - pw, 0)), (0, 0)))
    else:
        ones = jnp.pad(jnp.ones((1, h, w, 1), jnp.float32), ((0, 0), (ph, rh), (pw, rw), (0, 0)))
    count = lax.reduce_window(ones, 0.0, lax.add, (1, kh, kw, 1), (1, sh, sw, 1), "VALID")
    return (total / count[:, :oh, :ow].astype(x.dtype)).astype(x.dtype)


def _bins(size, out):
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def adaptive_avg_pool2d(x, output_size):
    oh, ow = _pair(output_size)
    h, w = x.shape[1], x.shape[2]
    if (oh, ow) == (1, 1):
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    if h % oh == 0 and w % ow == 0:
        return x.reshape(x.shape[0], oh, h // oh, ow, w // ow, x.shape[3]).mean(axis=(2, 4))
    rows = [jnp.stack([x[:, a:b, c:d].mean(axis=(1, 2)) for c, d in _bins(w, ow)], axis=1)
            for a, b in _bins(h, oh)]
    return jnp.stack(rows, axis=1)
