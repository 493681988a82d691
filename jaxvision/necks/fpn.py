"""Feature Pyramid Network, exact to ``torchvision.ops.FeaturePyramidNetwork``.

Per input map (highest resolution first, the ``feature_info`` order): a lateral 1x1 conv
(``inner_blocks.i.0``) and an output 3x3 conv (``layer_blocks.i.0``), both with bias (or, with
``norm``, without bias and followed by ``.1``, as torchvision's ``norm_layer``).  Top-down: the
coarser merged map is upsampled with torch's *nearest* rule to the lateral's size (odd sizes
included) and added.  Extra blocks: ``"pool"`` (LastLevelMaxPool: ``max_pool2d(k=1, s=2)`` on
the last output, named ``pool``) or ``"p6p7"`` (LastLevelP6P7: ``p6`` = 3x3/2 conv, ``p7`` =
3x3/2 conv after ReLU).  P6 reads P5 when ``extra_in_channels == out_channels`` and C5
otherwise -- torchvision's ``use_P5`` rule (RetinaNet passes 256: P5; 2048: C5).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn

from jaxvision.layers.conv import Conv2d
from jaxvision.layers.interpolate import interpolate
from jaxvision.layers.norm import norm_factory
from jaxvision.layers.pool import max_pool2d

# torchvision's FPN init: kaiming_uniform_(a=1) (gain 1: bound sqrt(3 / fan_in)), zero bias
fpn_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
EXTRA_BLOCKS = (None, "pool", "p6p7")


class LastLevelP6P7(nn.Module):
    """torchvision's ``extra_blocks`` of RetinaNet: ``p6`` = 3x3/2 conv, ``p7`` = 3x3/2 conv on
    ReLU(P6)."""

    out_channels: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        conv = lambda name: Conv2d(self.out_channels, 3, 2, 1, bias=True, dtype=self.dtype,
                                   kernel_init=fpn_kernel_init, name=name)
        p6 = conv("p6")(x)
        return p6, conv("p7")(nn.relu(p6))


class FPN(nn.Module):
    out_channels: int = 256
    extra_blocks: Optional[str] = None  # None, "pool" or "p6p7"
    extra_in_channels: Optional[int] = None  # LastLevelP6P7's in_channels (default: P5's)
    norm: Optional[str] = None  # torchvision's norm_layer: None, or a jaxvision norm name
    dtype: Any = None

    def _conv(self, features, k, name, stride=1):
        return Conv2d(features, k, stride, k // 2, bias=self.norm is None, dtype=self.dtype,
                      kernel_init=fpn_kernel_init, name=name)

    def _block(self, x, k, name, train):
        x = self._conv(self.out_channels, k, f"{name}_0")(x)
        if self.norm is not None:
            x = norm_factory(self.norm, self.dtype)(name=f"{name}_1")(x, train)
        return x

    @nn.compact
    def __call__(self, feats: dict, train: bool = False) -> dict:
        if self.extra_blocks not in EXTRA_BLOCKS:
            raise ValueError(f"extra_blocks must be one of {EXTRA_BLOCKS}, got "
                             f"{self.extra_blocks!r}")
        if not isinstance(feats, dict) or not feats:
            raise ValueError("FPN expects a non-empty dict of NHWC maps, highest resolution "
                             "first")
        names, maps = list(feats), list(feats.values())
        for n, m in zip(names, maps):
            if m.ndim != 4:
                raise ValueError(f"FPN input {n!r}: expected NHWC, got shape {tuple(m.shape)}")
        last = len(maps) - 1
        inner = self._block(maps[-1], 1, f"inner_blocks_{last}", train)
        results = [self._block(inner, 3, f"layer_blocks_{last}", train)]
        for i in range(last - 1, -1, -1):
            lateral = self._block(maps[i], 1, f"inner_blocks_{i}", train)
            inner = lateral + interpolate(inner, lateral.shape[1:3], "nearest")
            results.insert(0, self._block(inner, 3, f"layer_blocks_{i}", train))
        if self.extra_blocks == "pool":
            names.append("pool")
            results.append(max_pool2d(results[-1], 1, 2, 0))
        elif self.extra_blocks == "p6p7":
            in_ch = self.out_channels if self.extra_in_channels is None else self.extra_in_channels
            src = results[-1] if in_ch == self.out_channels else maps[-1]
            if src.shape[-1] != in_ch:
                raise ValueError(f"LastLevelP6P7: in_channels {in_ch} but its input "
                                 f"({'P5' if src is results[-1] else 'C5'}) has {src.shape[-1]}")
            p6, p7 = LastLevelP6P7(self.out_channels, self.dtype, name="extra_blocks")(src)
            names += ["p6", "p7"]
            results += [p6, p7]
        return dict(zip(names, results))
