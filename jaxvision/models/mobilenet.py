"""MobileNet V1 (Howard et al. 2017), V2 and V3, laid out like torchvision's ``mobilenetv2.py`` and
``mobilenetv3.py``.

Parameter paths mirror torchvision's state_dict: ``features.3.conv.1.0.weight`` is
``params/features_3/conv_1_0/kernel``; V3's squeeze-excitation ``features.4.block.2.fc1`` is
``params/features_4/block_2/fc1``.  torchvision has no V1; ours uses the same ``features.N`` /
``classifier`` layout (each block ``features.N.{0,1,3,4}``: dw conv, BN, pw conv, BN).

``features_only=True`` returns maps keyed by the ``features`` index that ends each stride:
the last layer at stride 2, 4, 8, 16 and 32 (as timm picks stage ends).  V2: ``features_1``,
``features_3``, ``features_6``, ``features_13``, ``features_18``; V3-large: ``features_1``,
``features_3``, ``features_6``, ``features_12``, ``features_16``; V3-small: ``features_0``,
``features_1``, ``features_3``, ``features_8``, ``features_12``; V1: ``features_1``,
``features_3``, ``features_5``, ``features_11``, ``features_13``.  The last one includes the final
1x1 conv, which is what torchvision's detection and segmentation models take from V3.  With V3's
``dilated=True`` the names stay and the last stage's reduction becomes 16.
``feature_taps="starts"`` (V2, V3) gives torchvision's segmentation/detection taps instead:
``features[0]``, each strided block and the last layer (V3-large: ``features_0, _2, _4, _7,
_13, _16``; ``features_4`` is the 40-channel stride-8 map LR-ASPP and the DeepLabV3 aux head read).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import (Conv2d, Linear, SqueezeExcitation, adaptive_avg_pool2d,
                              conv_norm_act, hardsigmoid, hardswish, kaiming_normal_fan_out,
                              make_divisible, norm_factory, relu6)
from jaxvision.models._features import FeatureCollector, features_at_strides
from jaxvision.models._stages import StageLayout, block_range
from jaxvision.registry import register_model

# torchvision re-initialises every Linear with N(0, 0.01) and zero bias.
_linear_init = dict(kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros)


# torchvision's MobileNets initialise every conv with kaiming_normal_(mode="fan_out").
_conv_norm_act = partial(conv_norm_act, kernel_init=kaiming_normal_fan_out)


def _conv(features, k, stride=1, groups=1, dilation=1, bias=False, name=None, dtype=None,
          kernel_init=kaiming_normal_fan_out):
    # torchvision's Conv2dNormActivation padding; kaiming_normal_(mode="fan_out"), zero bias.
    return Conv2d(features, k, stride, (k - 1) // 2 * dilation, dilation, groups, bias=bias,
                  dtype=dtype, kernel_init=kernel_init,
                  bias_init=nn.initializers.zeros, name=name)


def _stage_layout(opens: Sequence[bool]) -> StageLayout:
    """``features_0`` is the stem; block i (1-based) opens a stage where ``opens[i - 1]`` (the
    first block always); the final 1x1 conv belongs to none, the classifier is the head."""
    bounds = [i for i, o in enumerate(opens, 1) if o or i == 1] + [len(opens) + 1]
    return StageLayout(r"features_0[_/]", tuple(block_range("features_", a, b)
                                                 for a, b in zip(bounds[:-1], bounds[1:])),
                       r"classifier_")


def _head(x, train, num_classes, dropout, dtype, hidden=None, hidden_act=None):
    x = adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
    if num_classes <= 0:
        return x
    if hidden is None:  # V1/V2: Dropout, Linear
        x = nn.Dropout(dropout)(x, deterministic=not train)
        return Linear(num_classes, x.shape[-1], dtype, name="classifier_1", **_linear_init)(x)
    # V3: Linear, Hardswish, Dropout, Linear
    x = hidden_act(Linear(hidden, x.shape[-1], dtype, name="classifier_0", **_linear_init)(x))
    x = nn.Dropout(dropout)(x, deterministic=not train)
    return Linear(num_classes, hidden, dtype, name="classifier_3", **_linear_init)(x)


# ----------------------------------------------------------------------------- MobileNetV2

V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))  # expand ratio t, channels c, repeats n, stride s


class InvertedResidual(nn.Module):
    """V2 block: 1x1 expand (unless t == 1), 3x3 depthwise, linear 1x1 projection."""

    inp: int
    oup: int
    stride: int
    expand_ratio: float
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {self.stride}")
        norm = norm_factory(self.norm, self.dtype)
        hidden = int(round(self.inp * self.expand_ratio))
        y, i = x, 0
        if self.expand_ratio != 1:
            y = _conv_norm_act(y, train, hidden, 1, "conv_0", norm=norm, act=relu6,
                               dtype=self.dtype)
            i = 1
        y = _conv_norm_act(y, train, hidden, 3, f"conv_{i}", norm=norm, act=relu6,
                           stride=self.stride, groups=hidden, dtype=self.dtype)
        y = _conv(self.oup, 1, name=f"conv_{i + 1}", dtype=self.dtype)(y)
        y = norm(name=f"conv_{i + 2}")(y, train)
        return x + y if self.stride == 1 and self.inp == self.oup else y


class MobileNetV2(nn.Module):
    num_classes: int = 1000
    width_mult: float = 1.0
    inverted_residual_setting: Optional[Sequence[Sequence[int]]] = None
    round_nearest: int = 8
    dropout: float = 0.2
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None
    feature_taps: str = "ends"  # or "starts" (torchvision's stage_indices)

    def _plan(self):
        """[(in, out, stride, t)] for each block, stem and last channels."""
        setting = V2_SETTING if self.inverted_residual_setting is None else \
            self.inverted_residual_setting
        if len(setting) == 0 or any(len(row) != 4 for row in setting):
            raise ValueError("inverted_residual_setting should be a non-empty list of 4-element "
                             f"[t, c, n, s] rows, got {setting}")
        stem = make_divisible(32 * self.width_mult, self.round_nearest)
        last = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
        blocks, inp = [], stem
        for t, c, n, s in setting:
            out = make_divisible(c * self.width_mult, self.round_nearest)
            for i in range(n):
                blocks.append((inp, out, s if i == 0 else 1, t))
                inp = out
        return stem, blocks, last

    @property
    def stage_layout(self) -> StageLayout:
        """By default mmdetection's MobileNetV2 stages, its runs of equal width (blocks
        1, 2, 3, 4, 3, 3, 1); with ``feature_taps="starts"`` (the segmenters' backbone) a
        stage opens at each strided block, as torchvision's ``stage_indices``."""
        _, blocks, _ = self._plan()
        if self.feature_taps == "starts":
            return _stage_layout([b[2] > 1 for b in blocks])
        return _stage_layout([i > 0 and b[1] != blocks[i - 1][1] for i, b in enumerate(blocks)])

    @property
    def feature_info(self):
        stem, blocks, last = self._plan()
        channels = [stem] + [b[1] for b in blocks] + [last]
        strides = [2]
        for b in blocks:
            strides.append(strides[-1] * b[2])
        return features_at_strides(channels, strides + strides[-1:], taps=self.feature_taps)

    @nn.compact
    def __call__(self, x, train: bool = False):
        stem, blocks, last = self._plan()
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        norm = norm_factory(self.norm, self.dtype)
        x = x.astype(self.dtype)
        x = _conv_norm_act(x, train, stem, 3, "features_0", norm=norm, act=relu6, stride=2,
                           dtype=self.dtype)
        if feats.add("features_0", x):
            return feats.maps
        for i, (inp, out, stride, t) in enumerate(blocks, 1):
            x = InvertedResidual(inp, out, stride, t, self.norm, self.dtype,
                                 name=f"features_{i}")(x, train)
            if feats.add(f"features_{i}", x):
                return feats.maps
        i = len(blocks) + 1
        x = _conv_norm_act(x, train, last, 1, f"features_{i}", norm=norm, act=relu6,
                           dtype=self.dtype)
        if feats.add(f"features_{i}", x):
            return feats.maps
        return _head(x, train, self.num_classes, self.dropout, self.dtype)


# ----------------------------------------------------------------------------- MobileNetV3

# (in, kernel, expanded, out, use_se, activation, stride, dilated-stage) as torchvision's
# _mobilenet_v3_conf; "tail" rows are halved by reduced_tail and dilated by dilated=True.
V3_SETTINGS = {
    "large": ([(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
               (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
               (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
               (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
               (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
               (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1)],
              [(112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
               (160, 5, 960, 160, True, "HS", 1)], 1280),
    "small": ([(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
               (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
               (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
               (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1)],
              [(48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
               (96, 5, 576, 96, True, "HS", 1)], 1024),
}


def inverted_residual_v3(x, train, cnf, norm, child, dtype=None,
                         kernel_init=kaiming_normal_fan_out, expanded=False):
    """V3's block as children ``child(i)`` of the calling module (``i`` the index in torch's
    ``block`` Sequential).  ``expanded=True`` starts at the depthwise conv on an already expanded
    ``x``: SSDLite cuts its C4 block there, and torch's slice keeps the indices."""
    inp, k, exp, out, use_se, act_name, stride, dilation = cnf
    act = hardswish if act_name == "HS" else nn.relu
    y, i = x, 0
    if exp != inp:
        if not expanded:
            y = _conv_norm_act(y, train, exp, 1, child(0), norm=norm, act=act, dtype=dtype,
                               kernel_init=kernel_init)
        i = 1
    elif expanded:
        raise ValueError(f"a block without expansion (in {inp} == expanded {exp}) cannot start "
                         "after its expansion")
    y = _conv_norm_act(y, train, exp, k, child(i), norm=norm, act=act,
                       stride=1 if dilation > 1 else stride, groups=exp, dilation=dilation,
                       dtype=dtype, kernel_init=kernel_init)
    if use_se:
        i += 1
        y = SqueezeExcitation(make_divisible(exp // 4, 8), scale_activation=hardsigmoid,
                              dtype=dtype, kernel_init=kernel_init,
                              bias_init=nn.initializers.zeros, name=child(i))(y)
    y = _conv_norm_act(y, train, out, 1, child(i + 1), norm=norm, act=None, dtype=dtype,
                       kernel_init=kernel_init)
    return y + x if stride == 1 and inp == out and not expanded else y


class InvertedResidualV3(nn.Module):
    cnf: tuple  # (in, kernel, expanded, out, use_se, activation, stride, dilation)
    norm: str = "batch"
    dtype: Any = jnp.float32
    momentum: float = 0.01  # torch's; SSDLite's backbone uses 0.03
    kernel_init: Callable = kaiming_normal_fan_out
    epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = norm_factory(self.norm, self.dtype, momentum=self.momentum, epsilon=self.epsilon)
        return inverted_residual_v3(x, train, self.cnf, norm, lambda i: f"block_{i}", self.dtype,
                                    self.kernel_init)


class MobileNetV3(nn.Module):
    arch: str = "large"  # or "small"
    num_classes: int = 1000
    width_mult: float = 1.0
    reduced_tail: bool = False
    dilated: bool = False  # last stage dilated instead of strided: output stride 16
    dropout: float = 0.2
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None
    feature_taps: str = "ends"  # or "starts" (torchvision's stage_indices)
    # torchvision's Faster R-CNN passes its own norm_layer (BatchNorm2d / FrozenBatchNorm2d):
    # eps 1e-5 and momentum 0.1 instead of V3's 1e-3 / 0.01
    norm_eps: float = 1e-3
    norm_momentum: float = 0.01

    def _plan(self):
        if self.arch not in V3_SETTINGS:
            raise ValueError(f"arch must be one of {sorted(V3_SETTINGS)}, got {self.arch!r}")
        body, tail, last = V3_SETTINGS[self.arch]
        div = 2 if self.reduced_tail else 1
        adjust = lambda c: make_divisible(c * self.width_mult, 8)
        cnfs = [(adjust(i), k, adjust(e), adjust(o), se, a, s, 1) for i, k, e, o, se, a, s in body]
        for j, (i, k, e, o, se, a, s) in enumerate(tail):
            # torchvision halves the tail's channels but the first row's input and expansion
            first = j == 0
            cnfs.append((adjust(i if first else i // div), k, adjust(e if first else e // div),
                         adjust(o // div),
                         se, a, s, 2 if self.dilated else 1))
        return cnfs, adjust(last // div)

    @property
    def stage_layout(self) -> StageLayout:
        """A stage opens at each strided block (nominal stride, dilated or not)."""
        return _stage_layout([c[6] > 1 for c in self._plan()[0]])

    def dilation_kwargs(self, output_stride: int) -> dict:
        """Output stride 16: the last stage dilated (torchvision's ``dilated=True``)."""
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride={output_stride}: MobileNetV3 dilates only its last "
                             "stage (output stride 16 or 32)")
        return {"dilated": output_stride == 16}

    @property
    def feature_info(self):
        cnfs, _ = self._plan()
        channels = [cnfs[0][0]] + [c[3] for c in cnfs] + [6 * cnfs[-1][3]]
        strides, dilations = [2], [1]
        for c in cnfs:
            strides.append(strides[-1] * c[6])
            # torchvision's dilated stage: stride 1 instead, so its reduction stays
            dilations.append(dilations[-1] * (c[6] if c[7] > 1 else 1))
        return features_at_strides(channels, strides + strides[-1:], dilations + dilations[-1:],
                             self.feature_taps)

    @nn.compact
    def __call__(self, x, train: bool = False):
        cnfs, last_channel = self._plan()
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        norm = norm_factory(self.norm, self.dtype, momentum=self.norm_momentum,
                            epsilon=self.norm_eps)
        x = x.astype(self.dtype)
        x = _conv_norm_act(x, train, cnfs[0][0], 3, "features_0", norm=norm, act=hardswish,
                           stride=2, dtype=self.dtype)
        if feats.add("features_0", x):
            return feats.maps
        for i, cnf in enumerate(cnfs, 1):
            x = InvertedResidualV3(cnf, self.norm, self.dtype, self.norm_momentum,
                                   epsilon=self.norm_eps, name=f"features_{i}")(x, train)
            if feats.add(f"features_{i}", x):
                return feats.maps
        i = len(cnfs) + 1
        x = _conv_norm_act(x, train, 6 * cnfs[-1][3], 1, f"features_{i}", norm=norm, act=hardswish,
                           dtype=self.dtype)
        if feats.add(f"features_{i}", x):
            return feats.maps
        return _head(x, train, self.num_classes, self.dropout, self.dtype, last_channel,
                     hardswish)


# ----------------------------------------------------------------------------- MobileNetV1

# (output channels, stride) of the 13 depthwise-separable blocks, the paper's Table 1
V1_SETTING = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """Howard et al. 2017.  ``alpha`` scales every layer's channels as ``int(c * alpha)`` (the
    paper's width multiplier); ``rho`` only sets the default input size ``224 * rho``."""

    num_classes: int = 1000
    alpha: float = 1.0
    rho: float = 1.0
    dropout: float = 0.0  # the paper uses none; kept for fine-tuning recipes
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    @property
    def stage_layout(self) -> StageLayout:
        """A stage opens at each strided block (the paper's Table 1)."""
        return _stage_layout([s > 1 for _, s in V1_SETTING])

    @property
    def image_size(self) -> int:
        if not self.rho > 0:
            raise ValueError(f"rho (resolution multiplier) must be > 0, got {self.rho}")
        return int(round(224 * self.rho))

    def _channels(self):
        if not self.alpha > 0:
            raise ValueError(f"alpha (width multiplier) must be > 0, got {self.alpha}")
        return [max(1, int(c * self.alpha)) for c in (32,) + tuple(c for c, _ in V1_SETTING)]

    @property
    def feature_info(self):
        strides = [2]
        for _, s in V1_SETTING:
            strides.append(strides[-1] * s)
        return features_at_strides(self._channels(), strides)

    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = self._channels()
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        norm = norm_factory(self.norm, self.dtype)
        x = x.astype(self.dtype)
        x = _conv_norm_act(x, train, channels[0], 3, "features_0", norm=norm, act=nn.relu, stride=2,
                           dtype=self.dtype)
        if feats.add("features_0", x):
            return feats.maps
        for i, ((_, stride), c) in enumerate(zip(V1_SETTING, channels[1:]), 1):
            # one Sequential(dw conv, BN, ReLU, pw conv, BN, ReLU) per block
            x = _conv_norm_act(x, train, x.shape[-1], 3, f"features_{i}", norm=norm, act=nn.relu,
                               stride=stride, groups=x.shape[-1], dtype=self.dtype)
            x = _conv(c, 1, name=f"features_{i}_3", dtype=self.dtype)(x)
            x = nn.relu(norm(name=f"features_{i}_4")(x, train))
            if feats.add(f"features_{i}", x):
                return feats.maps
        return _head(x, train, self.num_classes, self.dropout, self.dtype)


# ----------------------------------------------------------------------------- registry

def _register(name, cls, num_params, torch_name, notes="", **fixed):
    def build(**kwargs):
        return cls(**fixed, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``." if torch_name else notes
    register_model(name, family="mobilenet", torch_name=torch_name, num_params=num_params,
                   features=cls(**fixed).feature_info, notes=notes)(build)


# mean/std/resize 256/crop 224 of torchvision's IMAGENET1K_V1 weights are the registry defaults.
_register("mobilenet_v2", MobileNetV2, 3_504_872, "mobilenet_v2")
_register("mobilenet_v3_large", MobileNetV3, 5_483_032, "mobilenet_v3_large", arch="large")
_register("mobilenet_v3_small", MobileNetV3, 2_542_856, "mobilenet_v3_small", arch="small")
_register("mobilenet_v1", MobileNetV1, 4_231_976, None,
          notes="MobileNet V1 (Howard et al. 2017); torchvision has no V1, so there are no "
                "torchvision weights to load. alpha: width multiplier, rho: resolution "
                "multiplier (input 224*rho, no parameter changes).")
