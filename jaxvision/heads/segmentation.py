"""Segmentation heads: FCN, DeepLabV3, DeepLabV3+, LR-ASPP and DeepLab v1 (LargeFOV) / v2.

torchvision's ``FCNHead`` and ``DeepLabHead`` are flat ``nn.Sequential``s, so their layers are
named ``classifier.0``, ``classifier.1``, ... directly under the model.  ``fcn_head`` and
``deeplab_head`` are therefore functions called inside the segmenter's compact method: they
create ``{name}_0``, ``{name}_1``, ... as children of the caller, and converted weights land
without a rename.  ``LRASPPHead`` (a named-children module in torch) and the DeepLabV3+ decoder
(no torchvision twin) are ordinary modules.  Each returns logits at the resolution it works at;
the segmenter upsamples them to the input size.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.blocks import conv_norm_act
from jaxvision.layers.conv import Conv2d
from jaxvision.layers.interpolate import interpolate
from jaxvision.necks.aspp import ASPP


def _classifier(x, num_classes, name, dtype):
    return Conv2d(num_classes, 1, bias=True, in_features=x.shape[-1], dtype=dtype, name=name)(x)


def fcn_head(x, train: bool, num_classes: int, name: str = "classifier", *, norm: str = "batch",
             dropout: float = 0.1, dtype: Any = None):
    """torchvision's ``FCNHead(in, num_classes)``: 3x3 conv to in/4 + BN + ReLU, Dropout(0.1),
    1x1 conv with bias (``{name}_0``, ``{name}_1``, ``{name}_4``)."""
    inter = x.shape[-1] // 4
    x = conv_norm_act(x, train, inter, 3, names=(f"{name}_0", f"{name}_1"), norm=norm,
                      dtype=dtype)
    x = nn.Dropout(dropout, deterministic=not train)(x)
    return _classifier(x, num_classes, f"{name}_4", dtype)


def deeplab_head(x, train: bool, num_classes: int, name: str = "classifier", *,
                 atrous_rates: Sequence[int] = (12, 24, 36), channels: int = 256,
                 norm: str = "batch", dtype: Any = None):
    """torchvision's ``DeepLabHead``: ASPP (``{name}_0``), 3x3 conv + BN + ReLU (``{name}_1``,
    ``{name}_2``), 1x1 classifier with bias (``{name}_4``)."""
    x = ASPP(tuple(atrous_rates), channels, norm=norm, dtype=dtype, name=f"{name}_0")(x, train)
    x = conv_norm_act(x, train, channels, 3, names=(f"{name}_1", f"{name}_2"), norm=norm,
                      dtype=dtype)
    return _classifier(x, num_classes, f"{name}_4", dtype)


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ decoder (Chen et al. 2018, Sec. 3.1): ASPP on the high-level map; the stride-4
    low-level map through a 1x1 conv to ``low_channels`` (48) + BN + ReLU (fewer channels than
    the ASPP output, so the encoder's features dominate); the ASPP output upsampled bilinearly
    to the low-level size and concatenated; two 3x3 conv + BN + ReLU; a 1x1 classifier.
    Children: ``aspp``, ``project``, ``fuse_0``, ``fuse_1``, ``classifier``."""

    num_classes: int
    atrous_rates: Sequence[int] = (6, 12, 18)
    channels: int = 256
    low_channels: int = 48
    decoder_channels: int = 256
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, low, high, train: bool = False):
        kw = dict(norm=self.norm, dtype=self.dtype)
        high = ASPP(tuple(self.atrous_rates), self.channels, name="aspp", **kw)(high, train)
        low = conv_norm_act(low, train, self.low_channels, 1, "project", **kw)
        high = interpolate(high, low.shape[1:3], "bilinear", align_corners=False)
        x = jnp.concatenate([low, high], axis=-1)
        for i in range(2):
            x = conv_norm_act(x, train, self.decoder_channels, 3, f"fuse_{i}", **kw)
        return _classifier(x, self.num_classes, "classifier", self.dtype)


class LRASPPHead(nn.Module):
    """torchvision's ``LRASPPHead``: ``cbr`` (1x1 conv + BN + ReLU on the high map) gated by
    ``scale`` (global average -> 1x1 conv -> sigmoid), upsampled bilinearly to the low map's size
    and classified, plus a 1x1 classifier on the low map."""

    num_classes: int
    inter_channels: int = 128
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, low, high, train: bool = False):
        x = conv_norm_act(high, train, self.inter_channels, 1, "cbr", norm=self.norm,
                          dtype=self.dtype)
        s = jnp.mean(high, axis=(1, 2), keepdims=True)
        s = Conv2d(self.inter_channels, 1, dtype=self.dtype, name="scale_1")(s)
        x = x * nn.sigmoid(s)
        x = interpolate(x, low.shape[1:3], "bilinear", align_corners=False)
        return (_classifier(low, self.num_classes, "low_classifier", self.dtype)
                + _classifier(x, self.num_classes, "high_classifier", self.dtype))


class DeepLabV2Head(nn.Module):
    """DeepLab v2's ASPP (Chen et al. 2017, Fig. 4): parallel branches on one map, one per
    atrous rate, each predicting the classes; their logits are *summed* (v3's ASPP concatenates
    and projects instead).  ``channels=0``: each branch is one 3x3 dilated conv with bias to the
    classes (``branch_{i}_fc8``), as DeepLab v2 on ResNet-101 (rates 6, 12, 18, 24); ``channels``
    > 0: each branch is ``fc6`` (3x3 dilated, ``channels``) + ReLU + Dropout, ``fc7`` (1x1) +
    ReLU + Dropout and ``fc8`` (1x1 to the classes), v2's ASPP-L on VGG-16 (channels 1024).
    DeepLab v1's LargeFOV is one such branch at rate 12 (``atrous_rates=(12,)``)."""

    num_classes: int
    atrous_rates: Sequence[int] = (6, 12, 18, 24)
    channels: int = 0
    dropout: float = 0.5
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = lambda c, k, name, rate=1: Conv2d(c, k, padding=(k - 1) // 2 * rate,
                                                 dilation=rate, bias=True, dtype=self.dtype,
                                                 in_features=None, name=name)
        out = 0
        for i, rate in enumerate(self.atrous_rates):
            if not self.channels:
                out = out + conv(self.num_classes, 3, f"branch_{i}_fc8", rate)(x)
                continue
            y = x
            for name, k, r in (("fc6", 3, rate), ("fc7", 1, 1)):
                y = nn.relu(conv(self.channels, k, f"branch_{i}_{name}", r)(y))
                y = nn.Dropout(self.dropout, deterministic=not train)(y)
            out = out + conv(self.num_classes, 1, f"branch_{i}_fc8")(y)
        return out
