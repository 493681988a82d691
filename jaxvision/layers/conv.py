"""Convolution and linear layers laid out and initialised like torch's."""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import lowering
from jaxvision.layers.params import param

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu")
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's default for Conv2d and Linear weights: kaiming_uniform_(a=sqrt(5))
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def trunc_normal(std: float):
    """torch's ``trunc_normal_(std=std)``: it cuts at the absolute values +-2, more than 50 std
    for every std torchvision uses, so it is a plain normal (flax's ``truncated_normal`` would
    cut at 2 std)."""
    return nn.initializers.normal(std)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def uniform_bias(fan_in: int):
    """torch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nn.Module):
    """``nn.Conv``'s parameters (``kernel`` HWIO, ``bias``) and numerics, lowered per call by
    :func:`jaxvision.layers.lowering.conv2d` (im2col / einsum / per-tap on CPU, XLA's
    convolution elsewhere). Named ``Conv`` so that unnamed instances get ``nn.Conv``'s
    automatic names (``Conv_0``) and parameter trees are unchanged."""

    features: int
    kernel_size: tuple
    strides: tuple = (1, 1)
    padding: tuple = (0, 0)
    kernel_dilation: tuple = (1, 1)
    feature_group_count: int = 1
    use_bias: bool = False
    dtype: Any = None
    kernel_init: Any = torch_default_kernel
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        if cin % self.feature_group_count:
            raise ValueError(f"{cin} input channels do not split into "
                             f"{self.feature_group_count} groups")
        shape = (*self.kernel_size, cin // self.feature_group_count, self.features)
        kernel = param(self, "kernel", self.kernel_init, shape)
        bias = (param(self, "bias", self.bias_init, (self.features,))
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = lowering.conv2d(x, kernel, self.strides, self.padding, self.kernel_dilation,
                            self.feature_group_count)
        return y if bias is None else y + bias


def Conv2d(features: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
           bias: bool = False, dtype: Any = None, kernel_init=None, bias_init=None,
           in_features: Optional[int] = None, name: Optional[str] = None) -> Conv:
    """A convolution with torch's arguments: symmetric integer ``padding``, ``groups``."""
    if bias and bias_init is None:
        kh, kw = _pair(kernel_size)
        fan_in = (in_features // groups) * kh * kw if in_features else 0
        bias_init = uniform_bias(fan_in) if fan_in else nn.initializers.zeros
    return Conv(features, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation),
                groups, bias, dtype, kernel_init or torch_default_kernel,
                bias_init or nn.initializers.zeros, name=name)


def Linear(features: int, in_features: int, dtype: Any = None, kernel_init=None, bias_init=None,
           bias: bool = True, name: Optional[str] = None, dot_general=None) -> nn.Dense:
    """An ``nn.Dense`` initialised like ``torch.nn.Linear`` (unless inits are given);
    ``dot_general`` is Dense's product hook (``lowering.dense_dot_general``)."""
    return nn.Dense(
        features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=kernel_init or torch_default_kernel,
        bias_init=bias_init or uniform_bias(in_features), name=name, dot_general=dot_general)


class ConvTranspose2d(nn.Module):
    """``torch.nn.ConvTranspose2d`` (symmetric integer ``padding``, no groups or dilation).

    The kernel is stored (kh, kw, out, in): torch's (in, out, kh, kw) weight through the
    converter's OIHW -> HWIO rule, so torchvision's weights load and export with no exception.
    A kernel the size of its stride without padding (Mask R-CNN's 2x2 / 2) paints one block per
    input pixel: one matmul and a reshape, exact, instead of a convolution over a zero-dilated
    map; other shapes go through ``lax.conv_transpose``."""

    features: int
    kernel_size: tuple
    stride: tuple
    padding: tuple = (0, 0)
    use_bias: bool = True
    dtype: Any = None
    kernel_init: Any = kaiming_normal_fan_out  # torch's fan_out of (in, out, k, k): in * k * k
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        (kh, kw), (sh, sw), (ph, pw) = (_pair(self.kernel_size), _pair(self.stride),
                                        _pair(self.padding))
        kernel = param(self, "kernel", self.kernel_init, (kh, kw, self.features, x.shape[-1]))
        bias = (param(self, "bias", self.bias_init, (self.features,))
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        n, h, w, _ = x.shape
        if (kh, kw) == (sh, sw) and (ph, pw) == (0, 0):
            y = jnp.einsum("nhwc,ijoc->nhiwjo", x, kernel).reshape(n, h * kh, w * kw,
                                                                   self.features)
        else:
            y = jax.lax.conv_transpose(
                x, kernel, (sh, sw), [(kh - 1 - ph, kh - 1 - ph), (kw - 1 - pw, kw - 1 - pw)],
                dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
        return y if bias is None else y + bias
