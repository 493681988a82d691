"""Darknet-53 (YOLOv3's backbone) and CSPDarknet-53 (YOLOv4's), laid out like timm's
``cspnet.py`` so timm's weights convert with the generic rule.

torchvision has neither; the architecture follows the papers (Redmon & Farhadi 2018; Wang et
al., CSPNet, 2020; Bochkovskiy et al., YOLOv4, 2020) and is checked against timm's modules.
Each stage opens with a stride-2 3x3 conv; Darknet's residual block is 1x1 (half width) + 3x3.
A cross stage splits the expanded map in two, runs the blocks on one half and joins the halves
through 1x1 transitions.  Parameter paths: ``stem/conv1/conv/kernel``,
``stages_2/blocks_0/conv1/bn/scale``, ``head/fc/kernel``.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import (Conv2d, Linear, adaptive_avg_pool2d, check_nhwc,
                              kaiming_normal_fan_out, norm_factory)
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model

ACTIVATIONS = ("mish", "leaky_relu", "relu")
CHANNELS = (64, 128, 256, 512, 1024)
DEPTHS = (1, 2, 8, 8, 4)


def _activation(name: str, slope: float):
    if name not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {name!r}")
    return {"mish": jax.nn.mish, "relu": nn.relu,
            "leaky_relu": partial(nn.leaky_relu, negative_slope=slope)}[name]


class ConvNormAct(nn.Module):
    """timm's ConvNormAct: conv (no bias) ``conv``, BatchNorm ``bn``, then the activation."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    act: Any = None
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv2d(self.features, self.kernel_size, self.stride, self.kernel_size // 2,
                   dtype=self.dtype, kernel_init=kaiming_normal_fan_out, name="conv")(x)
        x = norm_factory(self.norm, self.dtype)(name="bn")(x, train)
        return self.act(x) if self.act is not None else x


class DarkBlock(nn.Module):
    features: int
    bottle_ratio: float
    act: Any
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        mid = int(round(self.features * self.bottle_ratio))
        y = ConvNormAct(mid, 1, act=self.act, norm=self.norm, dtype=self.dtype, name="conv1")(x, train)
        y = ConvNormAct(self.features, 3, act=self.act, norm=self.norm, dtype=self.dtype,
                        name="conv2")(y, train)
        return y + x


class CrossStage(nn.Module):
    """One stage: stride-2 ``conv_down``, then Darknet blocks, or with ``cross_stage`` timm's
    CrossStage (stage 1 expands x2 with half-width bottlenecks inside, later stages keep the
    width with full-width blocks on one half)."""

    index: int
    cross_stage: bool
    act: Any
    norm: str = "batch"
    dtype: Any = None
    features: int = 0  # 0: CHANNELS[index]
    depth: int = 0  # 0: DEPTHS[index]

    @nn.compact
    def __call__(self, x, train: bool = False):
        c, first = self.features or CHANNELS[self.index], self.index == 0
        depth = self.depth or DEPTHS[self.index]
        kw = dict(act=self.act, norm=self.norm, dtype=self.dtype)
        x = ConvNormAct(c, 3, 2, **kw, name="conv_down")(x, train)
        if not self.cross_stage:
            for j in range(depth):
                x = DarkBlock(c, 0.5, **kw, name=f"blocks_{j}")(x, train)
            return x
        exp = c * (2 if first else 1)
        x = ConvNormAct(exp, 1, **kw, name="conv_exp")(x, train)
        xs, xb = jnp.split(x, 2, axis=-1)
        for j in range(depth):
            xb = DarkBlock(c if first else c // 2, 0.5 if first else 1.0, **kw,
                           name=f"blocks_{j}")(xb, train)
        xb = ConvNormAct(exp // 2, 1, **kw, name="conv_transition_b")(xb, train)
        return ConvNormAct(c, 1, **kw, name="conv_transition")(
            jnp.concatenate([xs, xb], axis=-1), train)


class _Stem(nn.Module):
    act: Any
    norm: str = "batch"
    dtype: Any = None
    features: int = 32

    @nn.compact
    def __call__(self, x, train: bool = False):
        return ConvNormAct(self.features, 3, act=self.act, norm=self.norm, dtype=self.dtype,
                           name="conv1")(x, train)


class _Head(nn.Module):
    num_classes: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        x = adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        return Linear(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x)


class Darknet(nn.Module):
    """``cross_stage=True``: CSPDarknet-53, else Darknet-53.  ``channels`` / ``depths`` (one
    per stage; the stem is half the first width) make narrower or shallower variants, such as
    the small YOLO of ``jaxvision.models.detection.yolo``."""

    cross_stage: bool = False
    act: str = "leaky_relu"
    negative_slope: float = 0.1
    num_classes: int = 1000
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None
    channels: Sequence[int] = CHANNELS
    depths: Sequence[int] = DEPTHS

    @property
    def feature_info(self):
        return (FeatureInfo("stem", self.channels[0] // 2, 1),) + tuple(
            FeatureInfo(f"stages_{i}", c, 2 ** (i + 1)) for i, c in enumerate(self.channels))

    @property
    def stage_layout(self) -> StageLayout:
        return darknet_stage_layout("")

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_nhwc(x, type(self).__name__, channels=3)
        act = _activation(self.act, self.negative_slope)
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        if len(self.channels) != len(CHANNELS) or len(self.depths) != len(DEPTHS) or any(
                c % 2 or c < 2 for c in self.channels) or min(self.depths) < 1:
            raise ValueError(f"{type(self).__name__}: channels must be {len(CHANNELS)} even "
                             f"widths and depths {len(DEPTHS)} counts >= 1, got channels="
                             f"{tuple(self.channels)}, depths={tuple(self.depths)}")
        x = _Stem(act, self.norm, self.dtype, self.channels[0] // 2, name="stem")(
            x.astype(self.dtype), train)
        if feats.add("stem", x):
            return feats.maps
        for i in range(len(CHANNELS)):
            x = CrossStage(i, self.cross_stage, act, self.norm, self.dtype, self.channels[i],
                           self.depths[i], name=f"stages_{i}")(x, train)
            if feats.add(f"stages_{i}", x):
                return feats.maps
        if self.num_classes <= 0:
            return adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        return _Head(self.num_classes, self.dtype, name="head")(x)


def darknet_stage_layout(prefix: str) -> StageLayout:
    """The stem and five stages of a Darknet whose parameters sit under ``prefix``."""
    return StageLayout(rf"{prefix}stem/",
                       tuple(f"{prefix}stages_{i}/" for i in range(len(CHANNELS))), r"head/")


def _register(name, cross_stage, act, num_params, doc):
    def build(**kwargs):
        return Darknet(cross_stage=cross_stage, **{"act": act, **kwargs})

    build.__name__, build.__doc__ = name, doc
    register_model(name, family="darknet", torch_name=None, num_params=num_params,
                   input_size=(256, 256), resize_size=288, crop_size=256,
                   features=Darknet(cross_stage=cross_stage).feature_info,
                   notes="no torchvision twin; parameter paths follow timm's cspnet.py")(build)


_register("darknet53", False, "leaky_relu", 41_609_928,
          "Darknet-53 of YOLOv3 (leaky ReLU 0.1).")
_register("cspdarknet53", True, "mish", 27_642_184,
          "CSPDarknet-53 of YOLOv4 (Mish).")
