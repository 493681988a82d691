"""ResNet, ResNeXt and Wide ResNet, laid out like torchvision's ``models/resnet.py``.

Parameter paths mirror torchvision's state_dict: ``layer1.0.conv1.weight`` is
``params/layer1_0/conv1/kernel``.  ``features_only=True`` returns a dict of NHWC maps keyed
``stem`` (after the first ReLU, stride 2), ``layer1`` .. ``layer4`` (strides 4, 8, 16, 32, or
less with ``replace_stride_with_dilation``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import (Conv2d, Linear, adaptive_avg_pool2d, check_nhwc,
                              kaiming_normal_fan_out, max_pool2d, norm_factory)
from jaxvision.layers.dilation import warn_if_gridding
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model


def _norm(m, **kwargs):
    """``m``'s norm; ``norm_eps`` overrides its epsilon (torchvision's detection weights were
    trained with FrozenBatchNorm eps 0, see ``overwrite_eps``)."""
    eps = {} if m.norm_eps is None else {"epsilon": m.norm_eps}
    return norm_factory(m.norm, m.dtype, **eps, **kwargs)


def _conv(features, k, stride=1, groups=1, dilation=1, name=None, dtype=None):
    pad = dilation * (k // 2)
    return Conv2d(features, k, stride, pad, dilation, groups, dtype=dtype,
                  kernel_init=kaiming_normal_fan_out, name=name)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    groups: int = 1
    base_width: int = 64
    dilation: int = 1
    norm: str = "batch"
    norm_eps: Optional[float] = None
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.groups != 1 or self.base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if self.dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        norm = _norm(self)
        last_norm = _norm(self, zero_init=self.zero_init_residual)
        out = _conv(self.planes, 3, self.stride, name="conv1", dtype=self.dtype)(x)
        out = nn.relu(norm(name="bn1")(out, train))
        out = _conv(self.planes, 3, name="conv2", dtype=self.dtype)(out)
        out = last_norm(name="bn2")(out, train)
        identity = _downsample(self, x, self.planes, train)
        return nn.relu(out + identity)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    groups: int = 1
    base_width: int = 64
    dilation: int = 1
    norm: str = "batch"
    norm_eps: Optional[float] = None
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = _norm(self)
        last_norm = _norm(self, zero_init=self.zero_init_residual)
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        out = _conv(width, 1, name="conv1", dtype=self.dtype)(x)
        out = nn.relu(norm(name="bn1")(out, train))
        out = _conv(width, 3, self.stride, self.groups, self.dilation, "conv2", self.dtype)(out)
        out = nn.relu(norm(name="bn2")(out, train))
        out = _conv(self.planes * 4, 1, name="conv3", dtype=self.dtype)(out)
        out = last_norm(name="bn3")(out, train)
        identity = _downsample(self, x, self.planes * 4, train)
        return nn.relu(out + identity)


def _downsample(block, x, out_features, train):
    if not block.downsample:
        return x
    y = _conv(out_features, 1, block.stride, name="downsample_0", dtype=block.dtype)(x)
    return _norm(block)(name="downsample_1")(y, train)


class ResNet(nn.Module):
    block: str  # "basic" or "bottleneck"
    layers: Sequence[int]
    num_classes: int = 1000
    zero_init_residual: bool = False
    groups: int = 1
    width_per_group: int = 64
    replace_stride_with_dilation: Sequence[bool] = (False, False, False)
    # DeepLabV3's Multi-Grid: layer4's block j uses dilation * multi_grid[j] (e.g. (1, 2, 4))
    multi_grid: Optional[Sequence[int]] = None
    norm: str = "batch"
    norm_eps: Optional[float] = None
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    @property
    def stage_layout(self) -> StageLayout:
        return StageLayout(r"(conv1|bn1)/", tuple(f"layer{i}_" for i in
                                                  range(1, len(self.layers) + 1)), r"fc/")

    def dilation_kwargs(self, output_stride: int) -> dict:
        """The kwargs that dilate this ResNet's last stages instead of striding them
        (torchvision's ``replace_stride_with_dilation``): output stride 16 dilates layer4, 8
        layer3 and layer4."""
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
        if output_stride not in dilate:
            raise ValueError(f"output_stride must be one of {sorted(dilate)} for a ResNet, got "
                             f"{output_stride}")
        if self.block == "basic" and any(dilate[output_stride]):
            raise ValueError(f"output_stride={output_stride}: a BasicBlock ResNet cannot dilate "
                             "(torchvision's BasicBlock refuses dilation > 1)")
        return {"replace_stride_with_dilation": dilate[output_stride]}

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        """Channels of this variant and the real reduction: a stage whose stride is replaced by
        dilation keeps the previous stage's reduction."""
        if len(self.replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, "
                             f"got {self.replace_stride_with_dilation}")
        expansion = 4 if self.block == "bottleneck" else 1
        info, reduction = [FeatureInfo("stem", 64, 2)], 4
        for i, planes in enumerate((64, 128, 256, 512)):
            if i > 0 and not tuple(self.replace_stride_with_dilation)[i - 1]:
                reduction *= 2
            info.append(FeatureInfo(f"layer{i + 1}", planes * expansion, reduction))
        return tuple(info)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_nhwc(x, type(self).__name__)
        if len(self.replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, "
                             f"got {self.replace_stride_with_dilation}")
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)

        x = x.astype(self.dtype)
        x = _conv(64, 7, 2, name="conv1", dtype=self.dtype)(x)
        x = nn.relu(_norm(self)(name="bn1")(x, train))
        if feats.add("stem", x):
            return feats.maps
        x = max_pool2d(x, 3, 2, 1)
        inplanes, dilation = 64, 1
        if self.multi_grid is not None and len(self.multi_grid) != self.layers[-1]:
            raise ValueError(f"multi_grid needs one rate per layer4 block ({self.layers[-1]}), "
                             f"got {self.multi_grid}")
        rates = []  # (name, dilation) of each block's 3x3 conv, for the HDC gridding check
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), self.layers)):
            stride = 1 if i == 0 else 2
            previous_dilation = dilation
            if i > 0 and self.replace_stride_with_dilation[i - 1]:
                dilation *= stride
                stride = 1
            expansion = block_cls.expansion
            for j in range(n):
                rate = previous_dilation if j == 0 else dilation
                if i == 3 and self.multi_grid is not None:
                    rate = dilation * self.multi_grid[j]
                rates.append((f"layer{i + 1}.{j}.conv2", rate))
                x = block_cls(
                    planes, stride if j == 0 else 1,
                    downsample=j == 0 and (stride != 1 or inplanes != planes * expansion),
                    groups=self.groups, base_width=self.width_per_group,
                    dilation=rate, norm=self.norm, norm_eps=self.norm_eps,
                    zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                    name=f"layer{i + 1}_{j}")(x, train)
            inplanes = planes * expansion
            done = feats.add(f"layer{i + 1}", x)
            if self.is_initializing() and (done or i == 3):
                warn_if_gridding(rates)  # when the model is built; once per stack
            if done:
                return feats.maps
        x = adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        if self.num_classes <= 0:
            return x
        return Linear(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x)


_VARIANTS = {
    # name: (block, layers, groups, width_per_group, torchvision param count)
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64, 11_689_512),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64, 21_797_672),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64, 25_557_032),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64, 44_549_160),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64, 60_192_808),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4, 25_028_904),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8, 88_791_336),
    "resnext101_64x4d": ("bottleneck", (3, 4, 23, 3), 64, 4, 83_455_272),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128, 68_883_240),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 1, 128, 126_886_696),
}


def _register(name, block, layers, groups, width, num_params):
    def build(**kwargs):
        return ResNet(block=block, layers=layers, groups=groups, width_per_group=width, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``."
    # the registry keeps the IMAGENET1K_V1 preset (resize 256); resnext101_64x4d's only weights
    # were trained with the new recipe and resize to 232
    register_model(name, family="resnet", torch_name=name, num_params=num_params,
                   resize_size=232 if name == "resnext101_64x4d" else 256,
                   features=ResNet(block=block, layers=layers).feature_info)(build)


for _name, _args in _VARIANTS.items():
    _register(_name, *_args)
