"""BatchNorm's training reductions as XLA:CPU custom calls (``bn_stats_cpu.cc``).

XLA:CPU (jaxlib 0.10.2) hands reductions to YNNPACK, which fuses no broadcast: a batch's
variance is taken from ``x - mean`` written out in full, and that tensor is kept for the
backward's ``sum(dy * (x - mean))``. Here the statistics are read from x directly (two reads,
nothing written) and the backward's two sums come from one read of dy and x.

Compiled with the system's C++ compiler on first use (``layers/native.py``). Without one, off
Linux, or with ``JAXVISION_CPU_BN_STATS=0``, ``why_not()`` names the reason and BatchNorm keeps
XLA's reductions.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from jaxvision.layers import native

ENV = "JAXVISION_CPU_BN_STATS"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bn_stats_cpu.cc")
TARGETS = {"jaxvision_bn_stats": "JaxvisionBnStats",
           "jaxvision_bn_grad_sums": "JaxvisionBnGradSums"}


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Registers the handlers with XLA once per process; the reason why not, or None."""
    return native.load(lambda: native.build("bn_stats", SOURCE, flags=["-O3"]), TARGETS, ENV,
                       "the custom calls are built on Linux only",
                       "BatchNorm keeps XLA's reductions", native.failed_to_compile)


def why_not() -> str | None:
    """None if the custom calls can be used in this process, else the reason why not."""
    return _load()


def usable(x, platform: str) -> bool:
    """Whether a BatchNorm on ``x`` traced for ``platform`` takes the custom calls: float32 on
    the CPU with one device (XLA's partitioner would gather a sharded batch for a custom
    call), and the calls built."""
    return (platform == "cpu" and x.dtype == jnp.float32 and x.ndim >= 2 and x.size > 0
            and jax.device_count("cpu") == 1 and _load() is None)


def _rows(x):
    if _load() is not None:
        raise RuntimeError(f"BatchNorm's custom calls are not available: {why_not()}")
    return x.reshape(-1, x.shape[-1])


# Both calls carry their derivatives as XLA reductions (custom_jvp): a BatchNorm's backward is
# made of them, so a gradient of a gradient (a gradient penalty, meta-learning) goes through.
@jax.custom_jvp
def stats(x):
    """The float32 mean over every axis but the last, and the biased variance around it."""
    c = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
    return jax.ffi.ffi_call("jaxvision_bn_stats", (c, c), vmap_method="sequential")(_rows(x))


@stats.defjvp
def _stats_jvp(primals, tangents):
    (x,), (tx,) = primals, tangents
    mean, var = stats(x)
    axes = tuple(range(x.ndim - 1))
    return (mean, var), (jnp.mean(tx, axes), 2.0 * jnp.mean((x - mean) * tx, axes))


@jax.custom_jvp
def grad_sums(dy, x, mean):
    """``(sum(dy), sum(dy * (x - mean)))`` over every axis but the last."""
    c = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
    return jax.ffi.ffi_call("jaxvision_bn_grad_sums", (c, c), vmap_method="sequential")(
        _rows(dy), _rows(x), mean)


@grad_sums.defjvp
def _grad_sums_jvp(primals, tangents):
    (dy, x, mean), (tdy, tx, tmean) = primals, tangents
    axes = tuple(range(x.ndim - 1))
    return grad_sums(dy, x, mean), (
        jnp.sum(tdy, axes), jnp.sum(tdy * (x - mean) + dy * (tx - tmean), axes))
