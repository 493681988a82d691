"""SqueezeNet 1.0 and 1.1, laid out like torchvision's ``models/squeezenet.py``.

Parameter paths mirror torchvision's state_dict: ``features.3.squeeze.weight`` is
``params/features_3/squeeze/kernel``; the classifier is a 1x1 conv, ``classifier.1``.

The max pools use ``ceil_mode=True`` and the first conv is unpadded, as torchvision's.
``num_classes=0`` returns the globally averaged 512-d trunk output (the classifier's input).
``features_only=True`` returns the last map at each stride: ``features_1`` (first conv + ReLU,
nominal stride 2), then the last Fire module before each pool and the last one overall (strides
4, 8, 16).  SqueezeNet has no stride-32 map.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import Conv2d, adaptive_avg_pool2d, max_pool2d
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout, block_range
from jaxvision.registry import FeatureInfo, register_model

# torch.nn.init.kaiming_uniform_ (a=0: gain sqrt(2), fan_in), torchvision's init for the trunk
_kaiming_uniform = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
_zeros = nn.initializers.zeros

# features index -> ("conv", out, kernel, stride) | ("pool",) | ("fire", squeeze, expand)
_VERSIONS = {
    "1_0": {0: ("conv", 96, 7, 2), 2: ("pool",), 3: ("fire", 16, 64), 4: ("fire", 16, 64),
            5: ("fire", 32, 128), 6: ("pool",), 7: ("fire", 32, 128), 8: ("fire", 48, 192),
            9: ("fire", 48, 192), 10: ("fire", 64, 256), 11: ("pool",), 12: ("fire", 64, 256)},
    "1_1": {0: ("conv", 64, 3, 2), 2: ("pool",), 3: ("fire", 16, 64), 4: ("fire", 16, 64),
            5: ("pool",), 6: ("fire", 32, 128), 7: ("fire", 32, 128), 8: ("pool",),
            9: ("fire", 48, 192), 10: ("fire", 48, 192), 11: ("fire", 64, 256),
            12: ("fire", 64, 256)},
}


def _conv(features, k, stride=1, padding=0, name=None, dtype=None, kernel_init=_kaiming_uniform):
    return Conv2d(features, k, stride, padding, bias=True, dtype=dtype, kernel_init=kernel_init,
                  bias_init=_zeros, name=name)


class Fire(nn.Module):
    squeeze_planes: int
    expand_planes: int  # each of the 1x1 and 3x3 expansions
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(_conv(self.squeeze_planes, 1, name="squeeze", dtype=self.dtype)(x))
        a = nn.relu(_conv(self.expand_planes, 1, name="expand1x1", dtype=self.dtype)(x))
        b = nn.relu(_conv(self.expand_planes, 3, padding=1, name="expand3x3", dtype=self.dtype)(x))
        return jnp.concatenate([a, b], axis=-1)


def _plan(version):
    if version not in _VERSIONS:
        raise ValueError(f"Unsupported SqueezeNet version {version}: 1_0 or 1_1 expected")
    return _VERSIONS[version]


class SqueezeNet(nn.Module):
    version: str = "1_0"
    num_classes: int = 1000
    dropout: float = 0.5
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    def _stage_ends(self):
        """features indices ending each stride: the stem's ReLU, the layer before each pool
        after the first, and the last layer."""
        plan = _plan(self.version)
        pools = [i for i, op in plan.items() if op[0] == "pool"]
        return [1] + [p - 1 for p in pools[1:]] + [max(plan)]

    @property
    def feature_info(self):
        plan = _plan(self.version)
        out = []
        for k, i in enumerate(self._stage_ends()):
            op = plan[i if i > 1 else 0]
            out.append(FeatureInfo(f"features_{i}", op[1] if i == 1 else 2 * op[2], 2 ** (k + 1)))
        return tuple(out)

    @property
    def stage_layout(self) -> StageLayout:
        ends = self._stage_ends()
        # stage k: the Fire modules from after stage k-1's end (and its pool) to stage k's end
        stages = tuple(block_range("features_", a + 1, b + 1, "/")
                       for a, b in zip(ends[:-1], ends[1:]))
        return StageLayout(stem=r"features_0/", stages=stages, head=r"classifier_1/")

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        x = x.astype(self.dtype)
        for i, op in _plan(self.version).items():
            if op[0] == "conv":
                x = nn.relu(_conv(op[1], op[2], op[3], name=f"features_{i}", dtype=self.dtype)(x))
                i += 1  # the map after the ReLU is torch's features[i + 1]
            elif op[0] == "pool":
                x = max_pool2d(x, 3, 2, ceil_mode=True)
            else:
                x = Fire(op[1], op[2], self.dtype, name=f"features_{i}")(x)
            if feats.add(f"features_{i}", x):
                return feats.maps
        if self.num_classes <= 0:
            return adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = _conv(self.num_classes, 1, name="classifier_1", dtype=self.dtype,
                  kernel_init=nn.initializers.normal(0.01))(x)
        return adaptive_avg_pool2d(nn.relu(x), 1).reshape(x.shape[0], -1)


def _register(name, version, num_params):
    def build(**kwargs):
        return SqueezeNet(version=version, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``."
    register_model(name, family="squeezenet", torch_name=name, num_params=num_params,
                   features=SqueezeNet(version=version).feature_info,
                   notes="no stride-32 map; num_classes=0 returns the pooled 512-d trunk")(build)


_register("squeezenet1_0", "1_0", 1_248_424)
_register("squeezenet1_1", "1_1", 1_235_496)
