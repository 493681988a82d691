"""Convolution and linear layers laid out and initialised like torch's."""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu")
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's default for Conv2d and Linear weights: kaiming_uniform_(a=sqrt(5))
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def uniform_bias(fan_in: int):
    """torch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def Conv2d(features: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
           bias: bool = False, dtype: Any = None, kernel_init=None, bias_init=None,
           in_features: Optional[int] = None, name: Optional[str] = None) -> nn.Conv:
    """An ``nn.Conv`` with torch's arguments: symmetric integer ``padding``, ``groups``."""
    kh, kw = _pair(kernel_size)
    ph, pw = _pair(padding)
    if bias and bias_init is None:
        fan_in = (in_features // groups) * kh * kw if in_features else 0
        bias_init = uniform_bias(fan_in) if fan_in else nn.initializers.zeros
    return nn.Conv(
        features, (kh, kw), strides=_pair(stride), padding=((ph, ph), (pw, pw)),
        kernel_dilation=_pair(dilation), feature_group_count=groups, use_bias=bias,
        dtype=dtype, param_dtype=jnp.float32,
        kernel_init=kernel_init or torch_default_kernel,
        bias_init=bias_init or nn.initializers.zeros, name=name)


def Linear(features: int, in_features: int, dtype: Any = None, kernel_init=None, bias_init=None,
           bias: bool = True, name: Optional[str] = None) -> nn.Dense:
    """An ``nn.Dense`` initialised like ``torch.nn.Linear`` (unless inits are given)."""
    return nn.Dense(
        features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=kernel_init or torch_default_kernel,
        bias_init=bias_init or uniform_bias(in_features), name=name)
