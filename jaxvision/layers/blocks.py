"""torchvision's ``Conv2dNormActivation`` (conv, norm, activation) as a function.

torch keeps it as a Sequential, so its children are ``{name}.0`` (conv) and ``{name}.1`` (norm);
creating them as ``{name}_0`` / ``{name}_1`` children of the *calling* module gives the same
parameter paths the converter expects.  Heads whose torch twin is a flat Sequential (DeepLabHead's
``classifier.1`` conv, ``classifier.2`` BN) pass explicit ``names``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn

from jaxvision.layers.conv import Conv2d
from jaxvision.layers.norm import norm_factory


def conv_norm_act(x, train: bool, features: int, kernel_size: int, name: Optional[str] = None, *,
                  norm: str = "batch", act: Optional[Callable] = nn.relu, stride: int = 1,
                  dilation: int = 1, groups: int = 1, padding: Optional[int] = None,
                  names: Optional[tuple[str, str]] = None, norm_kwargs: Optional[dict] = None,
                  kernel_init=None, dtype: Any = None):
    """Conv (no bias, torch's padding ``(k - 1) // 2 * dilation``) -> norm -> ``act``.

    Call inside a compact method: the layers become children of that module.
    """
    conv_name, norm_name = names if names is not None else (f"{name}_0", f"{name}_1")
    pad = (kernel_size - 1) // 2 * dilation if padding is None else padding
    x = Conv2d(features, kernel_size, stride, pad, dilation, groups, dtype=dtype,
               kernel_init=kernel_init, name=conv_name)(x)
    x = norm_factory(norm, dtype, **(norm_kwargs or {}))(name=norm_name)(x, train)
    return act(x) if act is not None else x
