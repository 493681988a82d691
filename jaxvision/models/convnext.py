"""ConvNeXt, laid out like torchvision's ``models/convnext.py``.

Parameter paths mirror torchvision's state_dict: ``features.1.0.block.0.weight`` (the depthwise
7x7 of stage 1's first block) is ``params/features_1_0/block_0/kernel``; ``layer_scale`` keeps
torch's (C, 1, 1) shape so the generic converter copies it untouched.  ``features`` holds, as in
torchvision, the stem (0), the four stages (1, 3, 5, 7) and the three downsamplers between them
(2, 4, 6: LayerNorm2d then a 2x2 stride-2 conv).

``features_only=True`` returns the four stages' maps ``stage1`` .. ``stage4`` (NHWC, reductions
4, 8, 16, 32).  ``num_classes=0`` returns the pooled embedding after ``classifier.0`` (the
LayerNorm2d), i.e. what the final Linear sees.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import Conv2d, Linear, layer_norm, trunc_normal
from jaxvision.layers.params import param
from jaxvision.layers.stochastic_depth import StochasticDepth
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model

_init = trunc_normal(0.02)
_zeros = nn.initializers.zeros


_layer_norm = partial(layer_norm, eps=1e-6)  # LayerNorm2d over channels: NHWC's last axis


class CNBlock(nn.Module):
    dim: int
    layer_scale: float
    stochastic_depth_prob: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        d = self.dim
        # torch's block Sequential: 0 dwconv, 1 permute, 2 norm, 3 linear, 4 GELU, 5 linear, 6 permute
        y = Conv2d(d, 7, padding=3, groups=d, bias=True, dtype=self.dtype, kernel_init=_init,
                   bias_init=_zeros, name="block_0")(x)
        y = _layer_norm(self.dtype, "block_2")(y)
        y = Linear(4 * d, d, self.dtype, _init, _zeros, name="block_3")(y)
        y = nn.gelu(y, approximate=False)
        y = Linear(d, 4 * d, self.dtype, _init, _zeros, name="block_5")(y)
        scale = param(self, "layer_scale", nn.initializers.constant(self.layer_scale), (d, 1, 1))
        y = scale.reshape(d).astype(y.dtype) * y
        return StochasticDepth(self.stochastic_depth_prob)(y, train) + x


# torchvision's CNBlockConfig(input_channels, out_channels, num_layers) per stage
_SETTINGS = {
    "convnext_tiny": ((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)),
    "convnext_small": ((96, 192, 3), (192, 384, 3), (384, 768, 27), (768, None, 3)),
    "convnext_base": ((128, 256, 3), (256, 512, 3), (512, 1024, 27), (1024, None, 3)),
    "convnext_large": ((192, 384, 3), (384, 768, 3), (768, 1536, 27), (1536, None, 3)),
}


class ConvNeXt(nn.Module):
    block_setting: Sequence[tuple[int, Optional[int], int]]
    stochastic_depth_prob: float = 0.0
    layer_scale: float = 1e-6
    num_classes: int = 1000
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    @property
    def feature_info(self):
        return tuple(FeatureInfo(f"stage{i + 1}", c, 4 * 2 ** i)
                     for i, (c, _, _) in enumerate(self.block_setting))

    @property
    def stage_layout(self) -> StageLayout:
        # stage k: its blocks (features_{2k-1}) and, from stage 2 on, the downsampler before it
        # (features_{2k-2}), as mmdetection's ConvNeXt counts them
        stages = tuple(f"features_({2 * k - 1}" + (f"|{2 * k - 2})_" if k > 1 else ")_")
                       for k in range(1, len(self.block_setting) + 1))
        return StageLayout(stem=r"features_0_", stages=stages, head=r"classifier_")

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 32:
            raise ValueError(f"expected NHWC images with 3 channels and sides of at least 32 "
                             f"(ConvNeXt downsamples 32x), got shape {x.shape}")
        if not self.block_setting:
            raise ValueError("The block_setting should not be empty")
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        x = x.astype(self.dtype)
        c0 = self.block_setting[0][0]
        x = Conv2d(c0, 4, 4, bias=True, dtype=self.dtype, kernel_init=_init, bias_init=_zeros,
                   name="features_0_0")(x)
        x = _layer_norm(self.dtype, "features_0_1")(x)
        total = sum(n for _, _, n in self.block_setting)
        block_id, idx = 0, 1
        for s, (cin, cout, n) in enumerate(self.block_setting):
            for j in range(n):
                # torchvision's linear rule; a one-block network divides by zero there too
                sd = self.stochastic_depth_prob * block_id / (total - 1.0)
                x = CNBlock(cin, self.layer_scale, sd, self.dtype, name=f"features_{idx}_{j}")(
                    x, train)
                block_id += 1
            if feats.add(f"stage{s + 1}", x):
                return feats.maps
            idx += 1
            if cout is not None:
                x = _layer_norm(self.dtype, f"features_{idx}_0")(x)
                x = Conv2d(cout, 2, 2, bias=True, dtype=self.dtype, kernel_init=_init,
                           bias_init=_zeros, name=f"features_{idx}_1")(x)
                idx += 1
        last = self.block_setting[-1]
        c = last[1] if last[1] is not None else last[0]
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        x = _layer_norm(self.dtype, "classifier_0")(x)
        if self.num_classes <= 0:
            return x
        return Linear(self.num_classes, c, self.dtype, _init, _zeros, name="classifier_2")(x)


_PARAMS = {"convnext_tiny": (28_589_128, 236, 0.1), "convnext_small": (50_223_688, 230, 0.4),
           "convnext_base": (88_591_464, 232, 0.5), "convnext_large": (197_767_336, 232, 0.5)}


def _register(name):
    num_params, resize, sd_prob = _PARAMS[name]
    setting = _SETTINGS[name]

    def build(**kwargs):
        # any field may be overridden (tests build reduced-depth twins with block_setting=...)
        return ConvNeXt(**{"block_setting": setting, "stochastic_depth_prob": sd_prob, **kwargs})

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}`` (stochastic_depth_prob={sd_prob})."
    features = tuple(FeatureInfo(f"stage{i + 1}", c, 4 * 2 ** i)
                     for i, (c, _, _) in enumerate(setting))
    register_model(name, family="convnext", torch_name=name, num_params=num_params,
                   resize_size=resize, crop_size=224, interpolation="bilinear",
                   features=features)(build)


for _name in _SETTINGS:
    _register(_name)
