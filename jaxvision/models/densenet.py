"""DenseNet-BC (Huang et al. 2017), laid out like torchvision's ``models/densenet.py``.

Parameter paths mirror torchvision's state_dict:
``features.denseblock1.denselayer1.norm1.weight`` is
``params/features/denseblock1/denselayer1/norm1/scale``, ``features.transition1.conv.weight`` is
``params/features/transition1/conv/kernel``, ``classifier.weight`` is
``params/classifier/kernel``.  torchvision's published checkpoints still use the legacy names
``denselayerN.norm.1`` / ``conv.2`` (from before '.' was banned in module names); the registry's
``adapt_state_dict`` renames them exactly as torchvision's ``_load_state_dict`` does.

``features_only=True`` returns ``relu0`` (stride 2), ``denseblock1`` .. ``denseblock3`` (4, 8,
16) and ``norm5`` (32, with the ReLU that torchvision's ``forward`` applies after it).
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import Conv2d, Linear, avg_pool2d, max_pool2d, norm_factory
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model

# torchvision's init: nn.init.kaiming_normal_ (fan_in, gain sqrt(2); jax's "normal" is untruncated)
_kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features, k, stride=1, padding=0, name=None, dtype=None):
    return Conv2d(features, k, stride, padding, dtype=dtype, kernel_init=_kaiming_normal,
                  name=name)


def _bottleneck(layer, x, train):
    """BN-ReLU-1x1 on the concatenation of every earlier map: the activations that grow with
    depth, which torchvision's ``memory_efficient`` recomputes in the backward pass."""
    y = nn.relu(norm_factory(layer.norm, layer.dtype)(name="norm1")(x, train))
    return _conv(layer.bn_size * layer.growth_rate, 1, name="conv1", dtype=layer.dtype)(y)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (to ``bn_size * growth_rate``) then BN-ReLU-3x3 (to ``growth_rate``).

    ``memory_efficient``: the bottleneck is rematerialised (``nn.remat``) like torchvision's
    ``checkpoint``: same parameters, same numbers, less memory for a second forward of it."""

    growth_rate: int
    bn_size: int
    drop_rate: float = 0.0
    norm: str = "batch"
    dtype: Any = jnp.float32
    memory_efficient: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = norm_factory(self.norm, self.dtype)
        bottleneck = (nn.remat(_bottleneck, static_argnums=(2,)) if self.memory_efficient
                      else _bottleneck)
        y = bottleneck(self, x, train)
        y = nn.relu(norm(name="norm2")(y, train))
        y = _conv(self.growth_rate, 3, padding=1, name="conv2", dtype=self.dtype)(y)
        if self.drop_rate > 0:
            y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
        return y


class DenseBlock(nn.Module):
    num_layers: int
    growth_rate: int
    bn_size: int
    drop_rate: float = 0.0
    norm: str = "batch"
    dtype: Any = jnp.float32
    memory_efficient: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        # torch concatenates the list [input, new_1, ..., new_k] for each layer: appending each
        # new map to the running concatenation gives the same tensor, channel for channel
        for i in range(self.num_layers):
            y = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, self.norm, self.dtype,
                           self.memory_efficient, name=f"denselayer{i + 1}")(x, train)
            x = jnp.concatenate([x, y], axis=-1)
        return x


class Transition(nn.Module):
    out_features: int
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(norm_factory(self.norm, self.dtype)(name="norm")(x, train))
        x = _conv(self.out_features, 1, name="conv", dtype=self.dtype)(x)
        return avg_pool2d(x, 2, 2)


class Features(nn.Module):
    """torchvision's ``features`` Sequential: conv0 .. denseblock4, norm5 (no final ReLU)."""

    growth_rate: int
    block_config: Sequence[int]
    num_init_features: int
    bn_size: int
    drop_rate: float
    norm: str
    dtype: Any
    memory_efficient: bool = False

    @nn.compact
    def __call__(self, x, train: bool, feats: FeatureCollector):
        """The trunk's output, or ``None`` once ``feats`` holds every map asked for."""
        norm = norm_factory(self.norm, self.dtype)
        x = _conv(self.num_init_features, 7, 2, 3, name="conv0", dtype=self.dtype)(x)
        x = nn.relu(norm(name="norm0")(x, train))
        if feats.add("relu0", x):
            return None
        x = max_pool2d(x, 3, 2, 1)
        c = self.num_init_features
        for i, n in enumerate(self.block_config):
            x = DenseBlock(n, self.growth_rate, self.bn_size, self.drop_rate, self.norm,
                           self.dtype, self.memory_efficient, name=f"denseblock{i + 1}")(x, train)
            c += n * self.growth_rate
            if i == len(self.block_config) - 1:
                break
            if feats.add(f"denseblock{i + 1}", x):
                return None
            x = Transition(c // 2, self.norm, self.dtype, name=f"transition{i + 1}")(x, train)
            c //= 2
        x = norm(name="norm5")(x, train)
        # the last map is the activated one torchvision's forward pools
        if feats.add("norm5", nn.relu(x)):
            return None
        return x


class DenseNet(nn.Module):
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    num_classes: int = 1000
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None
    memory_efficient: bool = False  # torchvision's option: rematerialise each bottleneck

    def _channels(self):
        """Channels after each dense block (transitions halve them)."""
        c, out = self.num_init_features, []
        for i, n in enumerate(self.block_config):
            c += n * self.growth_rate
            out.append(c)
            if i < len(self.block_config) - 1:
                c //= 2
        return out

    @property
    def feature_info(self):
        ch = self._channels()
        n = len(ch)
        return (FeatureInfo("relu0", self.num_init_features, 2),
                *(FeatureInfo(f"denseblock{i + 1}", ch[i], 2 ** (i + 2)) for i in range(n - 1)),
                FeatureInfo("norm5", ch[-1], 2 ** (n + 1)))

    @property
    def stage_layout(self) -> StageLayout:
        # stage k: the transition that downsamples into dense block k, then the block (as a
        # ResNet stage opens with its strided block); norm5 is outside the stages
        n = len(self.block_config)
        stages = (r"features/denseblock1/",) + tuple(
            rf"features/(transition{k - 1}|denseblock{k})/" for k in range(2, n + 1))
        return StageLayout(stem=r"features/(conv0|norm0)/", stages=stages, head=r"classifier/")

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        x = Features(self.growth_rate, tuple(self.block_config), self.num_init_features,
                     self.bn_size, self.drop_rate, self.norm, self.dtype, self.memory_efficient,
                     name="features")(
            x.astype(self.dtype), train, feats)
        if self.features_only:
            return feats.maps
        x = jnp.mean(nn.relu(x), axis=(1, 2))
        if self.num_classes <= 0:
            return x
        return Linear(self.num_classes, x.shape[-1], self.dtype,
                      bias_init=nn.initializers.zeros, name="classifier")(x)


# torchvision's pattern for the pre-0.3 names 'norm.1', 'relu.1', 'conv.1', 'norm.2', ...
_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                     r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def adapt_state_dict(sd: dict, model) -> dict:
    """``...denselayer1.norm.1.weight`` -> ``...denselayer1.norm1.weight``; others unchanged."""
    out = {}
    for key, value in sd.items():
        m = _LEGACY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


_VARIANTS = {  # name: (growth rate, block config, initial features, torchvision param count)
    "densenet121": (32, (6, 12, 24, 16), 64, 7_978_856),
    "densenet161": (48, (6, 12, 36, 24), 96, 28_681_000),
    "densenet169": (32, (6, 12, 32, 32), 64, 14_149_480),
    "densenet201": (32, (6, 12, 48, 32), 64, 20_013_928),
}


def _register(name, growth_rate, block_config, num_init_features, num_params):
    def build(**kwargs):
        arch = dict(growth_rate=growth_rate, block_config=block_config,
                    num_init_features=num_init_features)
        return DenseNet(**{**arch, **kwargs})  # torchvision's DenseNet options may be overridden

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``."
    register_model(name, family="densenet", torch_name=name, num_params=num_params,
                   features=build().feature_info, adapt_state_dict=adapt_state_dict,
                   notes="loads torchvision's legacy 'norm.1'/'conv.2' checkpoint keys")(build)


for _name, _args in _VARIANTS.items():
    _register(_name, *_args)
