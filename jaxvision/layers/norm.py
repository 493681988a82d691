"""Normalisation layers with torch's semantics.

``BatchNorm`` differs from ``flax.linen.BatchNorm`` where torch does: ``momentum`` is torch's
(weight of the new batch statistic), and the running variance is updated with the *unbiased*
batch variance while the batch itself is normalised with the biased one.  Statistics are always
computed in float32, whatever the compute dtype.
"""
from __future__ import annotations

import functools
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import bn_native, lowering
from jaxvision.layers.params import param


def _normalize(x, mean, var, scale, bias, eps, dtype):
    # at least float32 (bfloat16 compute normalises in float32); float64 stays float64, so a
    # model computed in float64 is that function in float64 (parity tests compare it to torch's)
    mul = scale * jnp.reciprocal(jnp.sqrt(var + eps))
    y = (x.astype(jnp.promote_types(x.dtype, jnp.float32)) - mean) * mul + bias
    return y.astype(dtype or x.dtype)


# A batch's statistics and normalisation with a hand-written gradient, where the CPU rewrites
# are on (``lowering.rewrites_on``; "xla" keeps jax's, forward mode included). Differentiated
# by jax, the normalisation saves ``x - mean`` for its backward pass, so XLA writes it out in the
# forward (a full pass over every BatchNorm's input, the largest single loop fusion of a
# mobilenet_v2 train step); here the backward recomputes it from x and the mean in the fusions
# that read x anyway. The forward is the other path's computation, unchanged.
def _batch_stats(x):
    """The mean and biased variance over every axis but the last, two-pass, in float32."""
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axes)
    return mean, jnp.mean(jnp.square(xf - mean), axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(x, scale, bias, eps, native):
    """(normalised x, batch mean, biased batch variance) over every axis but the last;
    ``native``: the reductions by ``bn_native``'s custom calls."""
    y, mean, var, _ = _batch_norm_train_fwd_core(x, scale, bias, eps, native)
    return y, mean, var


def _batch_norm_train_fwd_core(x, scale, bias, eps, native):
    mean, var = bn_native.stats(x) if native else _batch_stats(x)
    inv = jnp.reciprocal(jnp.sqrt(var + eps))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (xf - mean) * (scale * inv) + bias, mean, var, inv


def _batch_norm_train_fwd(x, scale, bias, eps, native):
    y, mean, var, inv = _batch_norm_train_fwd_core(x, scale, bias, eps, native)
    return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(eps, native, res, cts):
    x, mean, inv, scale = res
    dy, dmean, dvar = cts
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    xc = x.astype(jnp.promote_types(x.dtype, jnp.float32)) - mean
    dy = dy.astype(xc.dtype)
    if native:
        dbias, dy_xc = bn_native.grad_sums(dy, x, mean)
    else:
        dbias, dy_xc = jnp.sum(dy, axes), jnp.sum(dy * xc, axes)
    dscale = dy_xc * inv
    # through the normalisation, its mean and its variance; then the statistics' own outputs
    dx = (scale * inv) * (dy - dbias / n - xc * (inv * dscale / n)) \
        + dmean / n + dvar * (2.0 / n) * xc
    return dx.astype(x.dtype), dscale, dbias


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over every axis but the last (NHWC, NLC or NC).

    ``use_running_average=True`` makes the layer use and keep its running statistics even when
    called with ``train=True`` (mmdetection's ``norm_eval``); its affine parameters still train.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = None
    use_running_average: bool = False
    zero_init: bool = False  # scale starts at 0 (torchvision's zero_init_residual)

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        """``mask`` (x's shape without channels, or broadcastable to it): the positions whose
        statistics count in training, e.g. the real RoIs of a padded batch (torch never sees the
        padding); a batch with none leaves the running statistics as they were."""
        c = x.shape[-1]
        scale_init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
        scale = param(self, "scale", scale_init, (c,))
        bias = param(self, "bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train and not self.use_running_average:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            y = None
            if mask is None and lowering.rewrites_on():
                native = bn_native.usable(x, lowering.current()[1])
                y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon, native)
                n = x.size // c
            elif mask is None:
                mean, var = _batch_stats(x)
                n = x.size // c
            else:
                w = jnp.broadcast_to(mask, x.shape[:-1])[..., None].astype(jnp.float32)
                n = w.sum()
                mean = (xf * w).sum(axes) / jnp.maximum(n, 1.0)
                var = (jnp.square(xf - mean) * w).sum(axes) / jnp.maximum(n, 1.0)
            if not self.is_initializing():
                m = self.momentum
                new_mean = (1 - m) * ra_mean.value + m * mean
                unbias = n / max(n - 1, 1) if mask is None else n / jnp.maximum(n - 1, 1)
                new_var = (1 - m) * ra_var.value + m * var * unbias
                if mask is not None:
                    new_mean = jnp.where(n > 0, new_mean, ra_mean.value)
                    new_var = jnp.where(n > 0, new_var, ra_var.value)
                ra_mean.value, ra_var.value = new_mean, new_var
            if y is not None:
                return y.astype(self.dtype or x.dtype)
        else:
            mean, var = ra_mean.value, ra_var.value
        return _normalize(x, mean, var, scale, bias, self.epsilon, self.dtype)


class FrozenBatchNorm(nn.Module):
    """torchvision's FrozenBatchNorm2d: fixed statistics *and* affine.

    All four tensors live in the ``batch_stats`` collection, so no optimizer ever sees them and
    weight decay cannot move them; ``train`` is accepted and ignored.
    """

    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        c = x.shape[-1]
        get = lambda n, init: self.variable("batch_stats", n, init, (c,), jnp.float32).value
        scale, bias = get("scale", jnp.ones), get("bias", jnp.zeros)
        mean, var = get("mean", jnp.zeros), get("var", jnp.ones)
        return _normalize(x, mean, var, scale, bias, self.epsilon, self.dtype)


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm (affine) over NHWC; ``train`` is accepted so it drops in for BatchNorm.
    Parameters are ``scale``/``bias`` (torch's ``weight``/``bias``); statistics in float32."""

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels are not divisible into "
                             f"{self.num_groups} groups")
        scale = param(self, "scale", nn.initializers.ones, (c,))
        bias = param(self, "bias", nn.initializers.zeros, (c,))
        xf = x.astype(jnp.float32).reshape(*x.shape[:-1], self.num_groups, c // self.num_groups)
        axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
        mean = jnp.mean(xf, axes, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axes, keepdims=True)
        y = ((xf - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))).reshape(x.shape)
        return (y * scale + bias).astype(self.dtype or x.dtype)


NORMS = ("batch", "batch_eval", "frozen", "group")


def layer_norm(dtype: Any = None, name: str | None = None, eps: float = 1e-5) -> nn.LayerNorm:
    """torch's LayerNorm over the last axis (NHWC's channels: ConvNeXt's LayerNorm2d too):
    exact two-pass variance like torch, float32 parameters and statistics under bf16 compute."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                        use_fast_variance=False, name=name)


def norm_factory(norm: str, dtype: Any = None, **kwargs) -> Callable[..., nn.Module]:
    """``norm`` is one of ``NORMS``: trained BatchNorm, BatchNorm whose statistics stay fixed
    (``norm_eval``), FrozenBatchNorm (``epsilon`` as torchvision's ``eps``), or GroupNorm
    (``num_groups``, default 32) for heads trained with small batches."""
    if norm == "batch":
        return partial(BatchNorm, dtype=dtype, **kwargs)
    if norm == "batch_eval":
        return partial(BatchNorm, dtype=dtype, use_running_average=True, **kwargs)
    if norm == "frozen":
        kwargs.pop("momentum", None)  # frozen statistics have no momentum
        kwargs.pop("zero_init", None)  # nor a trainable scale to initialise
        return partial(FrozenBatchNorm, dtype=dtype, **kwargs)
    if norm == "group":
        kwargs.pop("momentum", None)
        kwargs.pop("zero_init", None)
        return partial(GroupNorm, dtype=dtype, **kwargs)  # num_groups=32 unless given
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
