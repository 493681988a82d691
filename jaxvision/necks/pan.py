"""Path aggregation neck as in YOLOv4 (Bochkovskiy et al. 2020; PANet, Liu et al. 2018, with
concatenation instead of addition).

Input: a dict of NHWC maps, highest resolution first (e.g. C3, C4, C5).  Top-down: the coarser
merged map goes through a 1x1 conv to the level's width, is upsampled (torch's nearest rule) to
the next level's size and concatenated with that level's 1x1 lateral; five convs (1x1, 3x3,
1x1, 3x3, 1x1) fuse them.  Bottom-up: each fused map is downsampled by a 3x3 stride-2 conv,
concatenated with the next coarser fused map and fused again by five convs.  Conv + BN + leaky
ReLU(0.1) throughout, as darknet.  Output: the same keys, widths ``channels``.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.activations import leaky
from jaxvision.layers.blocks import conv_norm_act
from jaxvision.layers.interpolate import interpolate


class PAN(nn.Module):
    channels: Sequence[int] = (128, 256, 512)  # output width per level, finest first
    norm: str = "batch"
    dtype: Any = None

    def _cba(self, x, train, c, k, name, stride=1):
        return conv_norm_act(x, train, c, k, name, norm=self.norm, act=leaky, stride=stride,
                             dtype=self.dtype)

    def _five(self, x, train, c, name):
        for i, (width, k) in enumerate(((c, 1), (2 * c, 3), (c, 1), (2 * c, 3), (c, 1))):
            x = self._cba(x, train, width, k, f"{name}_{i}")
        return x

    @nn.compact
    def __call__(self, feats: dict, train: bool = False) -> dict:
        names, maps = list(feats), list(feats.values())
        if len(maps) != len(self.channels) or len(maps) < 2:
            raise ValueError(f"PAN: {len(self.channels)} channel widths for {len(maps)} maps "
                             f"{names}; needs at least 2 maps and one width per map")
        n = len(maps)
        top = [None] * n
        top[-1] = self._cba(maps[-1], train, self.channels[-1], 1, f"top{n - 1}")
        for i in range(n - 2, -1, -1):
            c = self.channels[i]
            up = self._cba(top[i + 1], train, c, 1, f"reduce{i + 1}")
            lateral = self._cba(maps[i], train, c, 1, f"lateral{i}")
            up = interpolate(up, lateral.shape[1:3], "nearest")
            top[i] = self._five(jnp.concatenate([lateral, up], -1), train, c, f"top{i}")
        out = [top[0]]
        for i in range(1, n):
            down = self._cba(out[-1], train, self.channels[i], 3, f"down{i}", stride=2)
            if down.shape[1:3] != top[i].shape[1:3]:  # a backbone that floors odd sizes
                down = interpolate(down, top[i].shape[1:3], "nearest")
            out.append(self._five(jnp.concatenate([down, top[i]], -1), train, self.channels[i],
                                  f"bottom{i}"))
        return dict(zip(names, out))
