"""Convolutions as one view of the padded input per kernel tap (``tap_views``, shared with
im2col and the max pool), and the depthwise convolution as one multiply-add per tap
(``depthwise``, ``lowering``'s ``taps``) with its own gradients.

``spec`` is ``(stride, padding, dilation, oh, ow, r0, r1, c0, c1)``: pairs for the first three,
the output map's size, and the live kernel taps' row and column ranges (``lowering.live_taps``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def tap_views(x, kh, kw, stride, padding, dilation, oh, ow, rows=None, cols=None):
    """The kernel-tap views of the padded input: kh*kw arrays of shape (N, oh, ow, C), in the
    row-major order of the kernel (only taps ``rows`` x ``cols``, ranges, where given)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    n, _, _, c = x.shape
    views = []
    for i in rows or range(kh):
        for j in cols or range(kw):
            start = (0, i * dh, j * dw, 0)
            limit = (n, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, c)
            views.append(lax.slice(x, start, limit, (1, sh, sw, 1)))
    return views


def _depthwise_views(spec, x, cout):
    """The live taps' views of ``x``, each with the ``cout`` channels of the output."""
    stride, padding, dilation, oh, ow, r0, r1, c0, c1 = spec
    views = tap_views(x, r1 - r0, c1 - c0, stride, padding, dilation, oh, ow, range(r0, r1),
                      range(c0, c1))
    mult = cout // x.shape[-1]
    if mult > 1:  # torch's channel order: output o reads input o // mult
        views = [jnp.repeat(v, mult, axis=-1) for v in views]
    return views


def _taps_sum(spec, x, kernel):
    """The depthwise convolution as one multiply-add per live kernel tap."""
    kh, kw, _, cout = kernel.shape
    views = _depthwise_views(spec, x, cout)
    taps = kernel.reshape(kh * kw, cout)
    y = views[0] * taps[0]
    for k in range(1, kh * kw):
        y = y + views[k] * taps[k]
    return y


# Differentiated by jax, the taps' views were the residuals: XLA:CPU wrote each of the kh*kw
# shifted copies of the input as its own loop fusion in the forward pass (recomputing the
# BatchNorm and ReLU6 that produce the input in each) for the kernel gradient's reductions,
# which YNNPACK takes only from memory. Here the input alone is kept, and each tap's product
# with the output gradient is first summed over halves of the batch by slices and adds, which
# fuse into one loop: YNNPACK's reduction reads 1/16 of the bytes at batch 16.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def depthwise(spec, x, kernel):
    return _taps_sum(spec, x, kernel)


def _depthwise_fwd(spec, x, kernel):
    return _taps_sum(spec, x, kernel), (x, kernel)


def _depthwise_bwd(spec, res, g):
    x, kernel = res
    if _phase_input_grad(spec, x, kernel):
        dx = _strided_input_grad(spec, x.shape, kernel, g).astype(x.dtype)
    elif _padded_g_input_grad(spec, x, kernel):
        dx = _unit_stride_input_grad(spec, x.shape, kernel, g).astype(x.dtype)
    else:
        _, input_vjp = jax.vjp(lambda x: _taps_sum(spec, x, kernel), x)
        (dx,) = input_vjp(g)
    dk = jnp.stack([jnp.sum(_fold_batch(v * g), axis=(0, 1, 2))
                    for v in _depthwise_views(spec, x, kernel.shape[-1])])
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _padded_g_input_grad(spec, x, kernel):
    """Whether the input gradient is ``_unit_stride_input_grad``'s: unit-stride layers, one
    output channel per input channel."""
    return spec[0] == (1, 1) and kernel.shape[-1] == x.shape[-1]


def _unit_stride_input_grad(spec, x_shape, kernel, g):
    """A unit-stride depthwise convolution's input gradient: the flipped kernel's taps over g
    padded once, every tap a slice of that padded g.

    jax's transpose pads each tap's product with g out to the padded input and adds the kh*kw
    pads; XLA:CPU fused those pads, with the BatchNorm backward that produces g recomputed
    under each, into one loop that ran at ~27 ns of thread time an element (mobilenet_v2's
    56x56x144 layer, 4.7% of the train step). Here the taps are slices of one padded g, as the
    forward's are of the padded input.
    """
    _, (ph, pw), (dh, dw), oh, ow, r0, r1, c0, c1 = spec
    n, h, w, c = x_shape
    lo_h, lo_w = (r1 - 1) * dh, (c1 - 1) * dw
    hi_h = h + 2 * ph - r0 * dh - oh
    hi_w = w + 2 * pw - c0 * dw - ow
    gp = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0),
                                              (0, 0, 0)))
    taps = kernel.reshape(r1 - r0, c1 - c0, c)
    dx = None
    for i in range(r0, r1):
        for j in range(c0, c1):
            a, b = lo_h - i * dh + ph, lo_w - j * dw + pw
            t = lax.slice(gp, (0, a, b, 0), (n, a + h, b + w, c)) * taps[i - r0, j - c0]
            dx = t if dx is None else dx + t
    return dx


def _phase_input_grad(spec, x, kernel):
    """Whether the input gradient is ``_strided_input_grad``'s: strided layers, one output
    channel per input channel."""
    return spec[0] != (1, 1) and kernel.shape[-1] == x.shape[-1]


def _strided_input_grad(spec, x_shape, kernel, g):
    """A strided depthwise convolution's input gradient, phase by phase of the padded input.

    Padded row ``R = s*q + a`` (phase ``a``) receives ``g[o] * k[i]`` from each tap ``i`` with
    ``i*d = a + s*m`` at ``o = q - m``: a unit-stride shift of ``g``. jax's transpose of the
    strided tap slices pads each of them out to the whole input with holes and adds all the
    kh*kw of them at every element; here each phase sums only its own taps (at stride 2 and
    3x3: 1, 2, 2 and 4 of the 9), and the phases are interleaved by one reshape.
    """
    (sh, sw), (ph, pw), (dh, dw), oh, ow, r0, r1, c0, c1 = spec
    n, h, w, c = x_shape
    hp, wp = h + 2 * ph, w + 2 * pw
    lh, lw = -(-hp // sh), -(-wp // sw)  # rows and columns of the largest phase
    taps = kernel.reshape(r1 - r0, c1 - c0, c)
    phases = [[None] * sw for _ in range(sh)]
    for i in range(r0, r1):
        a, mi = (i * dh) % sh, (i * dh) // sh
        for j in range(c0, c1):
            b, mj = (j * dw) % sw, (j * dw) // sw
            # rows q of phase a, q in [0, lh): g[q - mi], zero outside g (negative pads crop)
            t = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (mi, lh - oh - mi, 0),
                                                     (mj, lw - ow - mj, 0), (0, 0, 0)))
            t = t * taps[i - r0, j - c0]
            phases[a][b] = t if phases[a][b] is None else phases[a][b] + t
    zero = jnp.zeros((n, lh, lw, c), g.dtype)
    rows = [jnp.stack([p if p is not None else zero for p in phase], axis=3) for phase in phases]
    dx = jnp.stack(rows, axis=2).reshape(n, lh * sh, lw * sw, c)
    return dx[:, ph:ph + h, pw:pw + w]


def _fold_batch(t):
    """``t`` summed over halves of its batch axis while that is even, by slices and adds."""
    while t.shape[0] % 2 == 0:
        half = t.shape[0] // 2
        t = t[:half] + t[half:]
    return t
