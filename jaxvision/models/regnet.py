"""RegNetX and RegNetY (Radosavovic et al. 2020), laid out like torchvision's ``regnet.py``.

Parameter paths mirror torchvision's state_dict, dashes included:
``trunk_output.block2.block2-0.f.b.0.weight`` is
``params/trunk_output/block2/block2-0/f/b_0/kernel``; the projection shortcut is ``.../proj_0``
and ``proj_1``, Y's squeeze-excitation ``.../f/se/fc1``, the stem ``stem_0``/``stem_1`` and the
head ``fc``.

Widths come from the four design parameters (depth, w_0, w_a, w_m) as torchvision's
``BlockParams.from_init_params`` computes them, in float32 as torch does.

``features_only=True`` returns ``stem`` (stride 2) and ``block1`` .. ``block4`` (strides 4 to
32), the outputs of torchvision's ``stem`` and ``trunk_output.block{k}``; the four blocks are the
stages ``freeze.frozen_stages`` counts.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Optional, Sequence

import numpy as np
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import (Linear, SqueezeExcitation, check_nhwc, conv_norm_act,
                              kaiming_normal_fan_out, make_divisible)
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model


def block_params(depth: int, w_0: int, w_a: float, w_m: float, group_width: int,
                 bottleneck_multiplier: float = 1.0):
    """[(width, depth, group width)] per stage, as ``BlockParams.from_init_params``."""
    if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % 8 != 0:
        raise ValueError(f"Invalid RegNet settings: w_a={w_a} (>= 0), w_0={w_0} (> 0, a "
                         f"multiple of 8), w_m={w_m} (> 1)")
    f32 = np.float32
    # the per-block widths, quantized to multiples of 8 in log space (float32, as torch)
    cont = np.arange(depth, dtype=f32) * f32(w_a) + f32(w_0)
    capacity = np.round(np.log(cont / f32(w_0)) / f32(math.log(w_m)))
    widths = (np.round(f32(w_0) * np.power(f32(w_m), capacity) / f32(8)) * 8).astype(int)
    stages = []  # runs of equal width are stages
    for w in widths.tolist():
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    out = []
    for w, d in stages:
        # _adjust_widths_groups_compatibilty: the bottleneck width a multiple of the group width
        w_bot = int(w * bottleneck_multiplier)
        g = min(group_width, w_bot)
        out.append((int(make_divisible(w_bot, g) / bottleneck_multiplier), d, g))
    return out


class BottleneckTransform(nn.Module):
    """1x1 (``a``), 3x3 grouped (``b``), [squeeze-excitation (``se``)], 1x1 (``c``)."""

    cnf: tuple  # (width_in, width_out, stride, group width, bottleneck multiplier, se ratio)
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        width_in, width_out, stride, group_width, multiplier, se_ratio = self.cnf
        cna = partial(conv_norm_act, norm=self.norm, kernel_init=kaiming_normal_fan_out,
                      dtype=self.dtype)
        w_b = int(round(width_out * multiplier))
        x = cna(x, train, w_b, 1, "a")
        x = cna(x, train, w_b, 3, "b", stride=stride, groups=w_b // group_width)
        if se_ratio:
            x = SqueezeExcitation(int(round(se_ratio * width_in)), nn.relu, dtype=self.dtype,
                                  name="se")(x)
        return cna(x, train, width_out, 1, "c", act=None)


class ResBottleneckBlock(nn.Module):
    """relu(shortcut + f(x)); the shortcut projects (``proj``) when width or stride change."""

    cnf: tuple  # as BottleneckTransform's
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        width_in, width_out, stride = self.cnf[:3]
        f = BottleneckTransform(self.cnf, self.norm, self.dtype, name="f")(x, train)
        if width_in != width_out or stride != 1:
            x = conv_norm_act(x, train, width_out, 1, "proj", norm=self.norm, act=None,
                              stride=stride, kernel_init=kaiming_normal_fan_out, dtype=self.dtype)
        return nn.relu(x + f)


class AnyStage(nn.Module):
    """``depth`` blocks named ``block{index}-{i}``, the first one changing width and stride."""

    index: int
    cnf: tuple  # (width_in, width_out, depth, group width, bottleneck multiplier, se ratio)
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        width_in, width_out, depth, *rest = self.cnf
        for i in range(depth):
            block = (width_in if i == 0 else width_out, width_out, 2 if i == 0 else 1, *rest)
            x = ResBottleneckBlock(block, self.norm, self.dtype,
                                   name=f"block{self.index}-{i}")(x, train)
        return x


class TrunkOutput(nn.Module):
    """torchvision's ``trunk_output``: the stages ``block1`` .. ``block{stop}``; returns the
    output of each stage run (``stop`` < all when ``features_only`` needs no more)."""

    stages: tuple  # ((width_in, width_out, depth, group width), ...)
    stop: int
    bottleneck_multiplier: float
    se_ratio: Optional[float]
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        outs = []
        for k, stage in enumerate(self.stages[:self.stop], 1):
            x = AnyStage(k, (*stage, self.bottleneck_multiplier, self.se_ratio), self.norm,
                         self.dtype, name=f"block{k}")(x, train)
            outs.append(x)
        return outs


class RegNet(nn.Module):
    depth: int = 22
    w_0: int = 24
    w_a: float = 24.48
    w_m: float = 2.54
    group_width: int = 16
    bottleneck_multiplier: float = 1.0
    se_ratio: Optional[float] = None  # 0.25 for RegNetY
    stem_width: int = 32
    num_classes: int = 1000
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    def _stages(self):
        params = block_params(self.depth, self.w_0, self.w_a, self.w_m, self.group_width,
                              self.bottleneck_multiplier)
        widths_in = [self.stem_width] + [w for w, _, _ in params[:-1]]
        return tuple((w_in, w, d, g) for w_in, (w, d, g) in zip(widths_in, params))

    @property
    def feature_info(self):
        stages = self._stages()
        return (FeatureInfo("stem", self.stem_width, 2),) + tuple(
            FeatureInfo(f"block{k}", s[1], 2 ** (k + 1)) for k, s in enumerate(stages, 1))

    @property
    def stage_layout(self) -> StageLayout:
        return StageLayout(stem=r"stem_", head=r"fc/", stages=tuple(
            rf"trunk_output/block{k}/" for k in range(1, len(self._stages()) + 1)))

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_nhwc(x, "RegNet")
        stages = self._stages()
        info = self.feature_info
        feats = FeatureCollector(info, self.features_only, self.out_indices)
        x = x.astype(self.dtype)
        x = conv_norm_act(x, train, self.stem_width, 3, "stem", norm=self.norm, stride=2,
                          kernel_init=kaiming_normal_fan_out, dtype=self.dtype)
        if feats.add("stem", x):
            return feats.maps
        # run only the stages the features asked for need
        stop = len(stages) if feats.wanted is None else max(
            i for i, f in enumerate(info) if f.name in feats.wanted)
        outs = TrunkOutput(stages, stop, self.bottleneck_multiplier, self.se_ratio, self.norm,
                           self.dtype, name="trunk_output")(x, train)
        for k, y in enumerate(outs, 1):
            if feats.add(f"block{k}", y):
                return feats.maps
        x = jnp.mean(outs[-1], axis=(1, 2))
        if self.num_classes <= 0:
            return x
        return Linear(self.num_classes, x.shape[-1], self.dtype, name="fc",
                      kernel_init=nn.initializers.normal(0.01),
                      bias_init=nn.initializers.zeros)(x)


# ----------------------------------------------------------------------------- registry

# name -> (depth, w_0, w_a, w_m, group_width, num_params), torchvision's builders
_X = {
    "400mf": (22, 24, 24.48, 2.54, 16, 5_495_976), "800mf": (16, 56, 35.73, 2.28, 16, 7_259_656),
    "1_6gf": (18, 80, 34.01, 2.25, 24, 9_190_136), "3_2gf": (25, 88, 26.31, 2.25, 48, 15_296_552),
    "8gf": (23, 80, 49.56, 2.88, 120, 39_572_648),
    "16gf": (22, 216, 55.59, 2.1, 128, 54_278_536),
    "32gf": (23, 320, 69.86, 2.0, 168, 107_811_560),
}
_Y = {
    "400mf": (16, 48, 27.89, 2.09, 8, 4_344_144), "800mf": (14, 56, 38.84, 2.4, 16, 6_432_512),
    "1_6gf": (27, 48, 20.71, 2.65, 24, 11_202_430),
    "3_2gf": (21, 80, 42.63, 2.66, 24, 19_436_338),
    "8gf": (17, 192, 76.82, 2.19, 56, 39_381_472),
    "16gf": (18, 200, 106.23, 2.48, 112, 83_590_140),
    "32gf": (20, 232, 115.89, 2.53, 232, 145_046_770),
    "128gf": (27, 456, 160.83, 2.52, 264, 644_812_894),
}


def _register(name, depth, w_0, w_a, w_m, group_width, num_params, se_ratio):
    fixed = dict(depth=depth, w_0=w_0, w_a=w_a, w_m=w_m, group_width=group_width,
                 se_ratio=se_ratio)

    def build(**kwargs):
        return RegNet(**{**fixed, **kwargs})  # design parameters may be overridden

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``."
    # DEFAULT weights: IMAGENET1K_V2 (resize 232, crop 224), except regnet_y_128gf's SWAG
    # end-to-end weights at 384
    big = name == "regnet_y_128gf"
    register_model(name, family="regnet", torch_name=name, num_params=num_params,
                   input_size=(384, 384) if big else (224, 224),
                   resize_size=384 if big else 232, crop_size=384 if big else 224,
                   interpolation="bicubic" if big else "bilinear",
                   features=RegNet(**fixed).feature_info)(build)


for _size, _p in _X.items():
    _register(f"regnet_x_{_size}", *_p, se_ratio=None)
for _size, _p in _Y.items():
    _register(f"regnet_y_{_size}", *_p, se_ratio=0.25)
