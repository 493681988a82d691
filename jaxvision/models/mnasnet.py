"""MNASNet-B1 (Tan et al. 2018), laid out like torchvision's ``models/mnasnet.py``.

Parameter paths mirror torchvision's state_dict: ``layers.8.0.layers.3.weight`` is
``params/layers_8_0/layers_3/kernel``, ``classifier.1.weight`` is ``params/classifier_1/kernel``.
BatchNorm momentum is torchvision's ``1 - 0.9997`` (TensorFlow's 0.9997 decay).

torchvision's ``_version`` 1 checkpoints (saved before depth scaling reached the stem) have a
fixed 32/16-channel stem and first stack input for every ``alpha``; ``stem_version=1`` builds
that layout (torchvision patches its model the same way when it loads such a checkpoint).
Loading one into a version-2 model fails with a message naming ``stem_version=1``.

``features_only=True`` returns the last map at each stride: ``layers_7`` (2), ``layers_8`` (4),
``layers_9`` (8), ``layers_11`` (16) and ``layers_16`` (32, after the final 1x1 conv + ReLU).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.errors import ConversionError
from jaxvision.layers import Conv2d, Linear, kaiming_normal_fan_out, norm_factory
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model

BN_MOMENTUM = 1 - 0.9997  # torchvision's _BN_MOMENTUM
# (kernel, stride, expansion, repeats) of the six stacks, features indices 8..13
STACKS = ((3, 2, 3, 3), (5, 2, 3, 3), (5, 2, 6, 3), (3, 1, 6, 2), (5, 2, 6, 4), (3, 1, 6, 1))
# torch's kaiming_uniform_(mode="fan_out", nonlinearity="sigmoid") of the classifier: gain 1
_linear_init = nn.initializers.variance_scaling(1.0, "fan_out", "uniform")


def _round_to_multiple_of(val: float, divisor: int, round_up_bias: float = 0.9) -> int:
    if not 0.0 < round_up_bias < 1.0:
        raise ValueError(f"round_up_bias should be greater than 0.0 and smaller than 1.0 "
                         f"instead of {round_up_bias}")
    new_val = max(divisor, int(val + divisor / 2) // divisor * divisor)
    return new_val if new_val >= round_up_bias * val else new_val + divisor


def get_depths(alpha: float) -> list[int]:
    return [_round_to_multiple_of(d * alpha, 8) for d in (32, 16, 24, 40, 80, 96, 192, 320)]


def _conv(features, k, stride=1, groups=1, name=None, dtype=None):
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"); no conv has a bias
    return Conv2d(features, k, stride, k // 2, groups=groups, dtype=dtype,
                  kernel_init=kaiming_normal_fan_out, name=name)


class InvertedResidual(nn.Module):
    in_ch: int
    out_ch: int
    kernel_size: int
    stride: int
    expansion_factor: int
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {self.stride}")
        if self.kernel_size not in (3, 5):
            raise ValueError(f"kernel_size should be 3 or 5 instead of {self.kernel_size}")
        norm = norm_factory(self.norm, self.dtype, momentum=BN_MOMENTUM)
        mid, dt = self.in_ch * self.expansion_factor, self.dtype
        y = nn.relu(norm(name="layers_1")(_conv(mid, 1, name="layers_0", dtype=dt)(x), train))
        y = _conv(mid, self.kernel_size, self.stride, mid, name="layers_3", dtype=dt)(y)
        y = nn.relu(norm(name="layers_4")(y, train))
        y = norm(name="layers_7")(_conv(self.out_ch, 1, name="layers_6", dtype=dt)(y), train)
        return y + x if self.in_ch == self.out_ch and self.stride == 1 else y


class MNASNet(nn.Module):
    alpha: float = 1.0
    num_classes: int = 1000
    dropout: float = 0.2
    stem_version: int = 2  # 1: torchvision's version-1 checkpoints (fixed 32/16 stem)
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    def _depths(self):
        if not self.alpha > 0.0:
            raise ValueError(f"alpha should be greater than 0.0 instead of {self.alpha}")
        if self.stem_version not in (1, 2):
            raise ValueError(f"stem_version should be 1 or 2 instead of {self.stem_version}")
        depths = get_depths(self.alpha)
        if self.stem_version == 1:
            depths[:2] = [32, 16]  # the alpha = 1 stem, whatever alpha
        return depths

    @property
    def feature_info(self):
        d = self._depths()
        return (FeatureInfo("layers_7", d[1], 2), FeatureInfo("layers_8", d[2], 4),
                FeatureInfo("layers_9", d[3], 8), FeatureInfo("layers_11", d[5], 16),
                FeatureInfo("layers_16", 1280, 32))

    @property
    def stage_layout(self) -> StageLayout:
        # the stem conv, then one stage per stride (the depthwise separable block at 2); the
        # final 1x1 conv (layers 14/15) is outside the stages, as MobileNet's
        return StageLayout(stem=r"layers_[01]/",
                           stages=(r"layers_[3-7]/", r"layers_8_", r"layers_9_",
                                   r"layers_1[01]_", r"layers_1[23]_"),
                           head=r"classifier_1/")

    @nn.compact
    def __call__(self, x, train: bool = False):
        d = self._depths()
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        norm = norm_factory(self.norm, self.dtype, momentum=BN_MOMENTUM)
        dt = self.dtype
        x = x.astype(dt)
        x = nn.relu(norm(name="layers_1")(_conv(d[0], 3, 2, name="layers_0", dtype=dt)(x), train))
        # depthwise separable, no skip
        x = _conv(d[0], 3, 1, d[0], name="layers_3", dtype=dt)(x)
        x = nn.relu(norm(name="layers_4")(x, train))
        x = norm(name="layers_7")(_conv(d[1], 1, name="layers_6", dtype=dt)(x), train)
        if feats.add("layers_7", x):
            return feats.maps
        inp = d[1]
        for j, (k, s, e, n) in enumerate(STACKS):
            out = d[j + 2]
            for i in range(n):
                x = InvertedResidual(inp if i == 0 else out, out, k, s if i == 0 else 1, e,
                                     self.norm, dt, name=f"layers_{8 + j}_{i}")(x, train)
            inp = out
            if feats.add(f"layers_{8 + j}", x):
                return feats.maps
        x = nn.relu(norm(name="layers_15")(_conv(1280, 1, name="layers_14", dtype=dt)(x), train))
        if feats.add("layers_16", x):
            return feats.maps
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes <= 0:
            return x
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return Linear(self.num_classes, 1280, dt, kernel_init=_linear_init,
                      bias_init=nn.initializers.zeros, name="classifier_1")(x)


def adapt_state_dict(sd: dict, model) -> dict:
    """Refuse, with the fix, a version-1 checkpoint (fixed 32-channel stem) for a model built with
    the version-2 stem: torchvision decides this from the state_dict's metadata, which a plain
    mapping of tensors no longer carries, so the stem's shape tells."""
    w = sd.get("layers.0.weight")
    depths = getattr(model, "_depths", None)  # a wrapper around the module forwards it
    stem = depths()[0] if callable(depths) else None
    if w is not None and stem is not None and w.shape[0] != stem and w.shape[0] == 32:
        raise ConversionError(
            f"this MNASNet checkpoint has torchvision's version-1 stem (32 channels, the model "
            f"expects {stem}): build the model with stem_version=1")
    return sd


_VARIANTS = {  # name: (alpha, torchvision param count, resize size of the default weights)
    "mnasnet0_5": (0.5, 2_218_512, 256), "mnasnet0_75": (0.75, 3_170_208, 232),
    "mnasnet1_0": (1.0, 4_383_312, 256), "mnasnet1_3": (1.3, 6_282_256, 232),
}


def _register(name, alpha, num_params, resize):
    def build(**kwargs):
        return MNASNet(alpha=alpha, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``."
    register_model(name, family="mnasnet", torch_name=name, num_params=num_params,
                   resize_size=resize, features=build().feature_info,
                   adapt_state_dict=adapt_state_dict,
                   notes="stem_version=1 for torchvision's version-1 checkpoints")(build)


for _name, _args in _VARIANTS.items():
    _register(_name, *_args)
