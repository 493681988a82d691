"""An identity whose cotangent XLA writes out once instead of fusing it into every consumer.

A residual stream's gradient is an elementwise add chain: each block adds its own terms to the
gradient from the blocks after it. XLA:CPU fused the whole chain into each consumer of the
gradient (the bias-gradient reduction, a dot's operand, a transposing copy), every one
recomputing all later blocks' terms: in vit_b_16's train step the first block's fusions held
~600 ops per element, the last's ~50 (docs/performance.md, "vit_b_16, session 30").
``lax.optimization_barrier`` does not stop this: XLA:CPU removes barriers before fusion. A
conditional does: no fusion crosses one, so the chain is computed once per block. Applied where
``lowering.rewrites_on`` (XLA:CPU); elsewhere, and under ``lowering.using("xla")`` (forward-mode
derivatives), ``grad_barrier`` is the identity.
"""
from __future__ import annotations

import jax
from jax import lax

from jaxvision.layers import lowering


def _written_out(g):
    """``g``, through a conditional XLA cannot fold: the predicate (g's first element equals
    itself) is false only for a NaN, and that branch returns ``g + 0`` (``g`` but for -0.0)."""
    first = g.reshape(-1)[0]
    return lax.cond(first == first, lambda a: a, lambda a: a + 0, g)


def grad_barrier(x):
    """``x``; on XLA:CPU its cotangent is materialized where it enters (the module's docstring)."""
    return _barrier(x) if lowering.rewrites_on() else x


@jax.custom_vjp
def _barrier(x):
    return x


def _fwd(x):
    return x, None


def _bwd(_, g):
    return (_written_out(g),)


_barrier.defvjp(_fwd, _bwd)
