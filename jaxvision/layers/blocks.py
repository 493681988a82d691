"""torchvision's ``Conv2dNormActivation`` (conv, norm, activation) as a function, its
``SqueezeExcitation``, and GoogLeNet's ``BasicConv2d``.

torch keeps it as a Sequential, so its children are ``{name}.0`` (conv) and ``{name}.1`` (norm);
creating them as ``{name}_0`` / ``{name}_1`` children of the *calling* module gives the same
parameter paths the converter expects.  Heads whose torch twin is a flat Sequential (DeepLabHead's
``classifier.1`` conv, ``classifier.2`` BN) pass explicit ``names``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.conv import Conv2d, kaiming_normal_fan_out
from jaxvision.layers.norm import norm_factory


def conv_norm_act(x, train: bool, features: int, kernel_size: int, name: Optional[str] = None, *,
                  norm: Union[str, Callable] = "batch", act: Optional[Callable] = nn.relu,
                  stride: int = 1, dilation: int = 1, groups: int = 1,
                  padding: Optional[int] = None,
                  names: Optional[tuple[str, str]] = None, norm_kwargs: Optional[dict] = None,
                  kernel_init=None, dtype: Any = None):
    """Conv (no bias, torch's padding ``(k - 1) // 2 * dilation``) -> norm -> ``act``.

    Call inside a compact method: the layers become children of that module.  ``norm`` is a
    :func:`~jaxvision.layers.norm.norm_factory` name, or a factory already made (a family that
    builds one per block, as MobileNet does, passes it down); ``norm_kwargs`` go with a name.
    """
    conv_name, norm_name = names if names is not None else (f"{name}_0", f"{name}_1")
    pad = (kernel_size - 1) // 2 * dilation if padding is None else padding
    x = Conv2d(features, kernel_size, stride, pad, dilation, groups, dtype=dtype,
               kernel_init=kernel_init, name=conv_name)(x)
    make_norm = norm if callable(norm) else norm_factory(norm, dtype, **(norm_kwargs or {}))
    x = make_norm(name=norm_name)(x, train)
    return act(x) if act is not None else x


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: mean pool, ``fc1``, ``activation``, ``fc2``,
    ``scale_activation``, times the input (MobileNetV3 scales with hardsigmoid)."""

    squeeze_channels: int
    activation: Callable = nn.relu
    scale_activation: Callable = jax.nn.sigmoid
    dtype: Any = jnp.float32
    kernel_init: Callable = kaiming_normal_fan_out
    bias_init: Optional[Callable] = None  # None: torch's default U(+-1/sqrt(fan_in))
    pool_dtype: Any = None  # the mean's dtype (None: the input's); MaxViT pools in float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        s = jnp.mean(x if self.pool_dtype is None else x.astype(self.pool_dtype), axis=(1, 2),
                     keepdims=True).astype(x.dtype)
        fc = lambda n, cin, name: Conv2d(n, 1, bias=True, dtype=self.dtype, in_features=cin,
                                         kernel_init=self.kernel_init, bias_init=self.bias_init,
                                         name=name)
        s = self.activation(fc(self.squeeze_channels, c, "fc1")(s))
        s = fc(c, self.squeeze_channels, "fc2")(s)
        return self.scale_activation(s) * x


class BasicConv2d(nn.Module):
    """GoogLeNet's and Inception v3's ``BasicConv2d``: conv (no bias) ``conv`` + BatchNorm
    (eps 0.001) ``bn`` + ReLU."""

    features: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    kernel_init: Any = None
    dtype: Any = jnp.float32
    norm: str = "batch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv2d(self.features, self.kernel_size, self.stride, self.padding, dtype=self.dtype,
                   kernel_init=self.kernel_init, name="conv")(x)
        bn = norm_factory(self.norm, self.dtype, epsilon=0.001)
        return nn.relu(bn(name="bn")(x, train))
