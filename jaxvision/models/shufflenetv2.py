"""ShuffleNet V2 (Ma et al. 2018), laid out like torchvision's ``models/shufflenetv2.py``.

Parameter paths mirror torchvision's state_dict: ``stage2.0.branch1.2.weight`` is
``params/stage2_0/branch1_2/kernel``, ``conv1.1.running_mean`` is ``batch_stats/conv1_1/mean``.

``features_only=True`` returns the last map at each stride: ``conv1`` (2), ``maxpool`` (4),
``stage2`` (8), ``stage3`` (16) and ``conv5`` (32: stage4 and the final 1x1 conv, as MobileNet's
last map here includes its final conv).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import Conv2d, Linear, adaptive_avg_pool2d, max_pool2d, norm_factory
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model


def channel_shuffle(x, groups: int):
    """torch's view(N, g, C/g, H, W) -> transpose(1, 2) -> view(N, C, H, W), on NHWC: channel
    ``j * g + i`` of the output is channel ``i * C/g + j`` of the input, as in torch."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, groups, c // groups)
    return jnp.swapaxes(x, 3, 4).reshape(n, h, w, c)


def _conv(features, k, stride=1, groups=1, name=None, dtype=None):
    # torchvision keeps torch's default init here (kaiming_uniform(a=sqrt(5)); no conv has bias)
    return Conv2d(features, k, stride, (k - 1) // 2, groups=groups, dtype=dtype, name=name)


class InvertedResidual(nn.Module):
    inp: int
    oup: int
    stride: int
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if not 1 <= self.stride <= 3:
            raise ValueError("illegal stride value")
        f = self.oup // 2
        if self.stride == 1 and self.inp != f << 1:
            raise ValueError(f"Invalid combination of stride {self.stride}, inp {self.inp} and "
                             f"oup {self.oup} values. If stride == 1 then inp should be equal to "
                             "oup // 2 << 1.")
        norm = norm_factory(self.norm, self.dtype)
        dt = self.dtype
        if self.stride == 1:
            x1, x2 = jnp.split(x, 2, axis=-1)  # torch's chunk(2, dim=1)
        else:
            # branch1: depthwise 3x3 (strided), BN, 1x1, BN, ReLU
            x1 = _conv(self.inp, 3, self.stride, self.inp, "branch1_0", dt)(x)
            x1 = norm(name="branch1_1")(x1, train)
            x1 = norm(name="branch1_3")(_conv(f, 1, name="branch1_2", dtype=dt)(x1), train)
            x1, x2 = nn.relu(x1), x
        # branch2: 1x1, BN, ReLU, depthwise 3x3, BN, 1x1, BN, ReLU
        y = nn.relu(norm(name="branch2_1")(_conv(f, 1, name="branch2_0", dtype=dt)(x2), train))
        y = norm(name="branch2_4")(_conv(f, 3, self.stride, f, "branch2_3", dt)(y), train)
        y = nn.relu(norm(name="branch2_6")(_conv(f, 1, name="branch2_5", dtype=dt)(y), train))
        return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class ShuffleNetV2(nn.Module):
    stages_repeats: Sequence[int] = (4, 8, 4)
    stages_out_channels: Sequence[int] = (24, 116, 232, 464, 1024)
    num_classes: int = 1000
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    def _check(self):
        if len(self.stages_repeats) != 3:
            raise ValueError("expected stages_repeats as list of 3 positive ints")
        if len(self.stages_out_channels) != 5:
            raise ValueError("expected stages_out_channels as list of 5 positive ints")

    @property
    def feature_info(self):
        self._check()
        c = self.stages_out_channels
        return (FeatureInfo("conv1", c[0], 2), FeatureInfo("maxpool", c[0], 4),
                FeatureInfo("stage2", c[1], 8), FeatureInfo("stage3", c[2], 16),
                FeatureInfo("conv5", c[4], 32))

    @property
    def stage_layout(self) -> StageLayout:
        # conv5 (the final 1x1 conv) is outside the stages, as MobileNet's last conv
        return StageLayout(stem=r"conv1_", stages=(r"stage2_", r"stage3_", r"stage4_"),
                           head=r"fc/")

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        norm = norm_factory(self.norm, self.dtype)
        c = self.stages_out_channels
        x = x.astype(self.dtype)
        x = nn.relu(norm(name="conv1_1")(_conv(c[0], 3, 2, name="conv1_0", dtype=self.dtype)(x),
                                         train))
        if feats.add("conv1", x):
            return feats.maps
        x = max_pool2d(x, 3, 2, 1)
        if feats.add("maxpool", x):
            return feats.maps
        inp = c[0]
        for s, (repeats, out) in enumerate(zip(self.stages_repeats, c[1:4]), 2):
            for i in range(repeats):
                x = InvertedResidual(inp if i == 0 else out, out, 2 if i == 0 else 1, self.norm,
                                     self.dtype, name=f"stage{s}_{i}")(x, train)
            inp = out
            if feats.add(f"stage{s}", x):
                return feats.maps
        x = _conv(c[4], 1, name="conv5_0", dtype=self.dtype)(x)
        x = nn.relu(norm(name="conv5_1")(x, train))
        if feats.add("conv5", x):
            return feats.maps
        x = adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        if self.num_classes <= 0:
            return x
        return Linear(self.num_classes, c[4], self.dtype, name="fc")(x)


_VARIANTS = {  # name: (stage out channels, torchvision param count, resize size)
    "shufflenet_v2_x0_5": ((24, 48, 96, 192, 1024), 1_366_792, 256),
    "shufflenet_v2_x1_0": ((24, 116, 232, 464, 1024), 2_278_604, 256),
    "shufflenet_v2_x1_5": ((24, 176, 352, 704, 1024), 3_503_624, 232),
    "shufflenet_v2_x2_0": ((24, 244, 488, 976, 2048), 7_393_996, 232),
}


def _register(name, channels, num_params, resize):
    def build(**kwargs):
        return ShuffleNetV2(stages_repeats=(4, 8, 4), stages_out_channels=channels, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``."
    register_model(name, family="shufflenet", torch_name=name, num_params=num_params,
                   resize_size=resize, features=build().feature_info)(build)


for _name, _args in _VARIANTS.items():
    _register(_name, *_args)
