"""EfficientNet B0-B7 (Tan & Le 2019) and EfficientNetV2 S/M/L (Tan & Le 2021), laid out like
torchvision's ``efficientnet.py``.

Parameter paths mirror torchvision's state_dict: ``features.2.1.block.0.0.weight`` (stage 2,
block 1, expand conv) is ``params/features_2_1/block_0_0/kernel``; the squeeze-excitation
``features.2.1.block.2.fc1`` is ``params/features_2_1/block_2/fc1``; the head is
``classifier_1``.

``features.0`` is the stem, ``features.1`` .. ``features.N`` the stages (one per row of the
paper's table; they are also the stages ``freeze.frozen_stages`` counts) and ``features.N+1`` the
final 1x1 conv.  ``features_only=True`` returns, as MobileNet does, the last map at each stride:
for B*: ``features_1`` (2), ``features_2`` (4), ``features_3`` (8), ``features_5`` (16) and
``features_8`` (32, after the final 1x1 conv); for V2-S ``features_7`` is the last.

Stochastic depth (torchvision's ``StochasticDepth(p, "row")``, ``p`` growing linearly with the
block index up to ``stochastic_depth_prob``) draws from the ``'dropout'`` rng in training only.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import (Linear, SqueezeExcitation, check_nhwc, conv_norm_act,
                              kaiming_normal_fan_out, make_divisible)
from jaxvision.models._features import FeatureCollector, features_at_strides
from jaxvision.models._stages import StageLayout
from jaxvision.registry import register_model

# (block, expand ratio, kernel, stride, input channels, output channels, layers): the paper's
# Table 1 (V1) and Table 4 (V2) as torchvision's _efficientnet_conf writes them.
_B = (("mb", 1, 3, 1, 32, 16, 1), ("mb", 6, 3, 2, 16, 24, 2), ("mb", 6, 5, 2, 24, 40, 2),
      ("mb", 6, 3, 2, 40, 80, 3), ("mb", 6, 5, 1, 80, 112, 3), ("mb", 6, 5, 2, 112, 192, 4),
      ("mb", 6, 3, 1, 192, 320, 1))
_V2 = {
    "s": (("fused", 1, 3, 1, 24, 24, 2), ("fused", 4, 3, 2, 24, 48, 4),
          ("fused", 4, 3, 2, 48, 64, 4), ("mb", 4, 3, 2, 64, 128, 6),
          ("mb", 6, 3, 1, 128, 160, 9), ("mb", 6, 3, 2, 160, 256, 15)),
    "m": (("fused", 1, 3, 1, 24, 24, 3), ("fused", 4, 3, 2, 24, 48, 5),
          ("fused", 4, 3, 2, 48, 80, 5), ("mb", 4, 3, 2, 80, 160, 7),
          ("mb", 6, 3, 1, 160, 176, 14), ("mb", 6, 3, 2, 176, 304, 18),
          ("mb", 6, 3, 1, 304, 512, 5)),
    "l": (("fused", 1, 3, 1, 32, 32, 4), ("fused", 4, 3, 2, 32, 64, 7),
          ("fused", 4, 3, 2, 64, 96, 7), ("mb", 4, 3, 2, 96, 192, 10),
          ("mb", 6, 3, 1, 192, 224, 19), ("mb", 6, 3, 2, 224, 384, 25),
          ("mb", 6, 3, 1, 384, 640, 7)),
}
_BN = (1e-5, 0.1)  # torch's BatchNorm2d defaults: (eps, momentum)
# arch -> (setting, width_mult, depth_mult, dropout, last_channel, (bn eps, bn momentum))
ARCHS = {
    "b0": (_B, 1.0, 1.0, 0.2, None, _BN), "b1": (_B, 1.0, 1.1, 0.2, None, _BN),
    "b2": (_B, 1.1, 1.2, 0.3, None, _BN), "b3": (_B, 1.2, 1.4, 0.3, None, _BN),
    "b4": (_B, 1.4, 1.8, 0.4, None, _BN),
    # torchvision's B5-B7 were ported from TF weights: BN eps 1e-3, momentum 0.01
    "b5": (_B, 1.6, 2.2, 0.4, None, (1e-3, 0.01)), "b6": (_B, 1.8, 2.6, 0.5, None, (1e-3, 0.01)),
    "b7": (_B, 2.0, 3.1, 0.5, None, (1e-3, 0.01)),
    "v2_s": (_V2["s"], 1.0, 1.0, 0.2, 1280, (1e-3, 0.1)),
    "v2_m": (_V2["m"], 1.0, 1.0, 0.3, 1280, (1e-3, 0.1)),
    "v2_l": (_V2["l"], 1.0, 1.0, 0.4, 1280, (1e-3, 0.1)),
}


def _linear_init(out_features):
    """torchvision's EfficientNet head: U(-1/sqrt(out_features), 1/sqrt(out_features))."""
    r = 1.0 / math.sqrt(out_features)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -r, r)


def stochastic_depth(module: nn.Module, x, p: float, train: bool):
    """torchvision.ops.stochastic_depth(x, p, "row", train): zero whole samples with
    probability ``p`` and rescale the rest by ``1 / (1 - p)``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if not train or p == 0.0:
        return x
    survival = 1.0 - p
    keep = jax.random.bernoulli(module.make_rng("dropout"), survival,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    noise = keep.astype(x.dtype)
    return x * (noise / survival if survival > 0.0 else noise)


def _cna(x, train, features, k, name, norm, bn, act, stride=1, groups=1, dtype=None):
    """torchvision's Conv2dNormActivation with EfficientNet's BatchNorm (eps, momentum) and
    its convs' kaiming_normal_(mode="fan_out") init."""
    return conv_norm_act(x, train, features, k, name, norm=norm, act=act, stride=stride,
                         groups=groups, norm_kwargs=dict(epsilon=bn[0], momentum=bn[1]),
                         kernel_init=kaiming_normal_fan_out, dtype=dtype)


class MBConv(nn.Module):
    """MBConv (expand 1x1, depthwise, SE, project 1x1) or FusedMBConv (fused expand kxk,
    project 1x1), with stochastic depth on the residual branch."""

    cnf: tuple  # (block, expand ratio, kernel, stride, in, out, stochastic depth p)
    norm: str = "batch"
    bn: tuple = _BN
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kind, ratio, k, stride, inp, out, sd_prob = self.cnf
        if stride not in (1, 2):
            raise ValueError(f"illegal stride value {stride}")
        cna = lambda y, c, kernel, name, act=nn.silu, s=1, g=1: _cna(
            y, train, c, kernel, name, self.norm, self.bn, act, s, g, self.dtype)
        expanded = make_divisible(inp * ratio, 8)
        y = x
        if kind == "mb":
            i = 0
            if expanded != inp:
                y, i = cna(y, expanded, 1, "block_0"), 1
            y = cna(y, expanded, k, f"block_{i}", s=stride, g=expanded)
            # torchvision squeezes to a quarter of the block's *input* channels
            y = SqueezeExcitation(max(1, inp // 4), nn.silu, dtype=self.dtype,
                                  bias_init=nn.initializers.zeros,
                                  name=f"block_{i + 1}")(y)
            y = cna(y, out, 1, f"block_{i + 2}", act=None)
        elif expanded != inp:
            y = cna(y, expanded, k, "block_0", s=stride)
            y = cna(y, out, 1, "block_1", act=None)
        else:
            y = cna(y, out, k, "block_0", s=stride)
        if stride == 1 and inp == out:
            y = stochastic_depth(self, y, sd_prob, train) + x
        return y


class EfficientNet(nn.Module):
    arch: str = "b0"  # one of ARCHS
    # rows (block, expand, kernel, stride, in, out, layers) replacing the arch's, which still
    # gives the multipliers, BN settings and last channels (torchvision's constructor argument)
    inverted_residual_setting: Optional[Sequence[tuple]] = None
    num_classes: int = 1000
    dropout: Optional[float] = None  # None: torchvision's default for the arch
    stochastic_depth_prob: float = 0.2
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    def _plan(self):
        """Stem channels, [[block cnf] per stage], last channels, BN (eps, momentum)."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {self.arch!r}")
        setting, wm, dm, _, last, bn = ARCHS[self.arch]
        if self.inverted_residual_setting is not None:
            setting = self.inverted_residual_setting
            if not setting or any(len(r) != 7 or r[0] not in ("mb", "fused") for r in setting):
                raise ValueError("inverted_residual_setting should be a non-empty list of rows "
                                 "(block 'mb' | 'fused', expand ratio, kernel, stride, in, out, "
                                 f"layers), got {setting}")
        adjust = lambda c: make_divisible(c * wm, 8)
        rows = [(kind, t, k, s, adjust(i), adjust(o), int(math.ceil(n * dm)))
                for kind, t, k, s, i, o, n in setting]
        total, block_id, stages = sum(r[-1] for r in rows), 0, []
        for kind, t, k, s, inp, out, n in rows:
            stage = []
            for j in range(n):
                p = self.stochastic_depth_prob * block_id / total
                stage.append((kind, t, k, s if j == 0 else 1, inp if j == 0 else out, out, p))
                block_id += 1
            stages.append(stage)
        return rows[0][4], stages, last or 4 * rows[-1][5], bn

    @property
    def feature_info(self):
        stem, stages, last, _ = self._plan()
        channels = [stem] + [st[0][5] for st in stages] + [last]
        strides = [2]
        for st in stages:
            strides.append(strides[-1] * st[0][3])
        return features_at_strides(channels, strides + strides[-1:])

    @property
    def stage_layout(self) -> StageLayout:
        n = len(self._plan()[1])
        return StageLayout(stem=r"features_0[_/]",
                           stages=tuple(rf"features_{k}[_/]" for k in range(1, n + 1)),
                           head=r"classifier_")

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_nhwc(x, "EfficientNet")
        stem, stages, last, bn = self._plan()
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        x = x.astype(self.dtype)
        x = _cna(x, train, stem, 3, "features_0", self.norm, bn, nn.silu, 2, dtype=self.dtype)
        if feats.add("features_0", x):
            return feats.maps
        for s, stage in enumerate(stages, 1):
            for j, cnf in enumerate(stage):
                x = MBConv(cnf, self.norm, bn, self.dtype, name=f"features_{s}_{j}")(x, train)
            if feats.add(f"features_{s}", x):
                return feats.maps
        s = len(stages) + 1
        x = _cna(x, train, last, 1, f"features_{s}", self.norm, bn, nn.silu, dtype=self.dtype)
        if feats.add(f"features_{s}", x):
            return feats.maps
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes <= 0:
            return x
        rate = ARCHS[self.arch][3] if self.dropout is None else self.dropout
        x = nn.Dropout(rate)(x, deterministic=not train)
        return Linear(self.num_classes, last, self.dtype, name="classifier_1",
                      kernel_init=_linear_init(self.num_classes),
                      bias_init=nn.initializers.zeros)(x)


# ----------------------------------------------------------------------------- registry

# name -> (num_params, crop, resize, interpolation) of torchvision's DEFAULT weights
_WEIGHTS = {
    "b0": (5_288_548, 224, 256, "bicubic"), "b1": (7_794_184, 240, 255, "bilinear"),
    "b2": (9_109_994, 288, 288, "bicubic"), "b3": (12_233_232, 300, 320, "bicubic"),
    "b4": (19_341_616, 380, 384, "bicubic"), "b5": (30_389_784, 456, 456, "bicubic"),
    "b6": (43_040_704, 528, 528, "bicubic"), "b7": (66_347_960, 600, 600, "bicubic"),
    "v2_s": (21_458_488, 384, 384, "bilinear"), "v2_m": (54_139_356, 480, 480, "bilinear"),
    "v2_l": (118_515_272, 480, 480, "bicubic"),
}


def _register(arch, num_params, crop, resize, interpolation):
    name = f"efficientnet_{arch}"

    def build(**kwargs):
        return EfficientNet(arch=arch, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``."
    # V2-L's weights were ported from TF with inputs scaled to [-1, 1]
    stats = dict(mean=(0.5,) * 3, std=(0.5,) * 3) if arch == "v2_l" else {}
    register_model(name, family="efficientnet", torch_name=name, num_params=num_params,
                   input_size=(crop, crop), resize_size=resize, crop_size=crop,
                   interpolation=interpolation, features=EfficientNet(arch=arch).feature_info,
                   **stats)(build)


for _arch, _w in _WEIGHTS.items():
    _register(_arch, *_w)
