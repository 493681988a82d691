"""Atrous Spatial Pyramid Pooling, exact to torchvision's ``models/segmentation/deeplabv3.ASPP``.

Branches (``convs.N`` in torch): a 1x1 conv, one dilated 3x3 conv per rate, and image pooling
(global average -> 1x1 conv -> BN -> ReLU -> bilinear upsampling, align_corners=False, to the
input size); concatenated and projected by a 1x1 conv + BN + ReLU + Dropout(0.5) (``project``).
Dropout draws from the ``'dropout'`` rng stream in training.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.blocks import conv_norm_act
from jaxvision.layers.interpolate import interpolate
from jaxvision.necks.base import single_map


class ASPP(nn.Module):
    """``x`` is an NHWC map, or a dict of maps (ASPP then reads the last one and returns the
    dict with that entry replaced, the neck contract)."""

    atrous_rates: Sequence[int] = (12, 24, 36)
    out_channels: int = 256
    dropout: float = 0.5
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        return single_map("ASPP", x, lambda x: self._aspp(x, train))

    def _aspp(self, x, train):
        # ASPP's branches are parallel, not stacked, so HDC's gridding rule does not apply here.
        c, kw = self.out_channels, dict(norm=self.norm, dtype=self.dtype)
        branches = [conv_norm_act(x, train, c, 1, "convs_0", **kw)]
        for i, rate in enumerate(self.atrous_rates, 1):
            branches.append(conv_norm_act(x, train, c, 3, f"convs_{i}", dilation=rate, **kw))
        i = len(self.atrous_rates) + 1
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)  # AdaptiveAvgPool2d(1)
        # torch's ASPPPooling is Sequential(pool, conv, bn, relu): children .1 and .2
        pooled = conv_norm_act(pooled, train, c, 1, names=(f"convs_{i}_1", f"convs_{i}_2"), **kw)
        branches.append(interpolate(pooled, x.shape[1:3], "bilinear", align_corners=False))
        y = conv_norm_act(jnp.concatenate(branches, axis=-1), train, c, 1, "project", **kw)
        return nn.Dropout(self.dropout, deterministic=not train)(y)
