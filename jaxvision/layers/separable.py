"""Depthwise-separable convolution as timm/effdet's ``SeparableConv2d``: ``conv_dw`` (k x k,
one filter per channel, no bias) -> ``conv_pw`` (1x1) -> optional ``bn`` -> optional act."""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn

from jaxvision.layers.conv import Conv2d
from jaxvision.layers.norm import BatchNorm


class SeparableConv2d(nn.Module):
    features: int
    kernel_size: int = 3
    stride: int = 1
    bias: bool = False  # conv_pw's
    norm_kwargs: Optional[dict] = None  # None: no ``bn``; else BatchNorm's (momentum, epsilon)
    act: Optional[Callable] = None
    dw_init: Any = None  # None: torch's default
    pw_init: Any = None
    bias_init: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, k = x.shape[-1], self.kernel_size
        # timm's padding='' : symmetric ((stride - 1) + (k - 1)) // 2
        x = Conv2d(c, k, self.stride, ((self.stride - 1) + (k - 1)) // 2, groups=c,
                   dtype=self.dtype, kernel_init=self.dw_init, name="conv_dw")(x)
        x = Conv2d(self.features, 1, bias=self.bias, dtype=self.dtype, kernel_init=self.pw_init,
                   bias_init=self.bias_init, in_features=c, name="conv_pw")(x)
        if self.norm_kwargs is not None:
            x = BatchNorm(**self.norm_kwargs, dtype=self.dtype, name="bn")(x, train)
        return x if self.act is None else self.act(x)
