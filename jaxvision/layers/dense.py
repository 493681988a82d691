"""A dense layer's product whose kernel gradient reads the output gradient where it lies.

Differentiated by jax, ``x @ kernel``'s kernel gradient is ``x^T g``, a dot that XLA:CPU fed
with ``g`` copied into feature-major order. In a transformer ``g`` is the residual stream's
gradient, an add chain of every later block's LayerNorm backward: the transposing copy
recomputed that chain in each block, 36% of vit_b_16's train step (docs/performance.md, "vit_b_16,
session 30"); in mobilenet_v2's 1x1 convolutions it recomputed the BatchNorm and depthwise input
gradient over the largest activations. As ``g^T x``, with the small (out, in) result
transposed, both operands are read in place. ``lowering`` uses it for 1x1 convolutions and,
through ``lowering.dense_dot_general``, for Dense layers, where ``lowering.rewrites_on``
(XLA:CPU); elsewhere, and under ``lowering.using("xla")`` (forward-mode derivatives), they keep
jax's product.
"""
from __future__ import annotations

import jax
from jax import lax


def contract_last(x, kernel):
    """``x[..., in] @ kernel[in, out]``, differentiated by jax."""
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def dense(x, kernel):
    """``x[..., in] @ kernel[in, out]``."""
    return contract_last(x, kernel)


def _dense_fwd(x, kernel):
    return contract_last(x, kernel), (x, kernel)


def _dense_bwd(res, g):
    x, kernel = res
    dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    dk = lax.dot_general(g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1]),
                         (((0,), (0,)), ((), ())))
    return dx.astype(x.dtype), dk.T.astype(kernel.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)
