"""GoogLeNet (Inception v1), laid out like torchvision's ``models/googlenet.py``.

Parameter paths mirror torchvision's state_dict (``inception3a.branch2.1.conv.weight`` is
``params/inception3a/branch2_1/conv/kernel``).  In training with ``aux_logits=True`` the model
returns ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` in torchvision's order; in eval
it returns the logits only.  ``features_only=True`` returns ``conv1`` (stride 2), ``conv3`` (4),
``inception3b`` (8), ``inception4e`` (16) and ``inception5b`` (32): the last map of each stride.

Registered defaults describe torchvision's pretrained checkpoint, not its random-weights builder:
``aux_logits=False`` (the checkpoint is used without aux heads; 6,624,904 parameters) and
``transform_input=True`` (the ported weights expect it).  Pass ``aux_logits=True`` /
``transform_input=False`` for torchvision's ``googlenet()`` without weights.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import (BasicConv2d, Linear, adaptive_avg_pool2d, flatten_nchw, max_pool2d,
                              transform_input)
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.models._weights import drop_aux_keys
from jaxvision.registry import FeatureInfo, register_model

# torchvision's init_weights: trunc_normal_(std=0.01, a=-2, b=2); at 200 sigma the truncation
# never bites, so a plain normal is the same distribution.
_googlenet_init = nn.initializers.normal(0.01)


class GoogLeNetOutputs(NamedTuple):
    logits: jax.Array
    aux_logits2: Optional[jax.Array]
    aux_logits1: Optional[jax.Array]


class Inception(nn.Module):
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    dtype: Any = jnp.float32
    norm: str = "batch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = lambda c, k, name, p=0: BasicConv2d(c, k, padding=p, kernel_init=_googlenet_init,
                                                   dtype=self.dtype, norm=self.norm, name=name)
        b1 = conv(self.ch1x1, 1, "branch1")(x, train)
        b2 = conv(self.ch3x3red, 1, "branch2_0")(x, train)
        b2 = conv(self.ch3x3, 3, "branch2_1", 1)(b2, train)
        # torchvision's "5x5" branch is a 3x3 conv (a known deviation it keeps for its weights)
        b3 = conv(self.ch5x5red, 1, "branch3_0")(x, train)
        b3 = conv(self.ch5x5, 3, "branch3_1", 1)(b3, train)
        b4 = max_pool2d(x, 3, 1, 1, ceil_mode=True)
        b4 = conv(self.pool_proj, 1, "branch4_1")(b4, train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
    num_classes: int
    dropout: float = 0.7
    dtype: Any = jnp.float32
    norm: str = "batch"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = adaptive_avg_pool2d(x, 4)
        x = BasicConv2d(128, 1, kernel_init=_googlenet_init, dtype=self.dtype, norm=self.norm,
                        name="conv")(x, train)
        x = flatten_nchw(x)
        dense = lambda n, fan_in, name: Linear(n, fan_in, dtype=self.dtype,
                                               kernel_init=_googlenet_init, name=name)
        x = nn.relu(dense(1024, 2048, "fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_classes, 1024, "fc2")(x)


_BLOCKS = {  # name: (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)
    "inception3a": (64, 96, 128, 16, 32, 32), "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64), "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64), "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128), "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    num_classes: int = 1000
    aux_logits: bool = False
    transform_input: bool = True
    dropout: float = 0.2
    dropout_aux: float = 0.7
    norm: str = "batch"  # "batch_eval" / "frozen" for freezing (BasicConv2d's BN, eps 0.001)
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    feature_info = (FeatureInfo("conv1", 64, 2), FeatureInfo("conv3", 192, 4),
                    FeatureInfo("inception3b", 480, 8), FeatureInfo("inception4e", 832, 16),
                    FeatureInfo("inception5b", 1024, 32))
    # stem conv1..conv3; stages inception3, 4, 5 (a..e); head fc and the two aux heads
    stage_layout = StageLayout(r"conv[123]/", tuple(f"inception{i}[a-e]/" for i in (3, 4, 5)),
                               r"(fc|aux1|aux2)/")

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        # aux heads also run at init so that eval-mode init creates every parameter
        with_aux = (self.aux_logits and self.num_classes > 0 and not self.features_only
                    and (train or self.is_initializing()))
        x = x.astype(self.dtype)
        if self.transform_input:
            x = transform_input(x)
        conv = lambda c, k, name, s=1, p=0: BasicConv2d(c, k, s, p, _googlenet_init, self.dtype,
                                                        self.norm, name=name)
        block = lambda name: Inception(*_BLOCKS[name], dtype=self.dtype, norm=self.norm,
                                       name=name)
        x = conv(64, 7, "conv1", 2, 3)(x, train)
        if feats.add("conv1", x):
            return feats.maps
        x = max_pool2d(x, 3, 2, ceil_mode=True)
        x = conv(64, 1, "conv2")(x, train)
        x = conv(192, 3, "conv3", p=1)(x, train)
        if feats.add("conv3", x):
            return feats.maps
        x = max_pool2d(x, 3, 2, ceil_mode=True)
        x = block("inception3a")(x, train)
        x = block("inception3b")(x, train)
        if feats.add("inception3b", x):
            return feats.maps
        x = max_pool2d(x, 3, 2, ceil_mode=True)
        x = block("inception4a")(x, train)
        aux = lambda name: InceptionAux(self.num_classes, self.dropout_aux, self.dtype,
                                        self.norm, name=name)
        aux1 = aux("aux1")(x, train) if with_aux else None
        for name in ("inception4b", "inception4c", "inception4d"):
            x = block(name)(x, train)
        aux2 = aux("aux2")(x, train) if with_aux else None
        x = block("inception4e")(x, train)
        if feats.add("inception4e", x):
            return feats.maps
        x = max_pool2d(x, 2, 2, ceil_mode=True)
        x = block("inception5a")(x, train)
        x = block("inception5b")(x, train)
        if feats.add("inception5b", x):
            return feats.maps
        x = adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        if self.num_classes <= 0:
            return x
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.num_classes, 1024, dtype=self.dtype, kernel_init=_googlenet_init,
                   name="fc")(x)
        if with_aux and train:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


@register_model("googlenet", family="googlenet", torch_name="googlenet", num_params=6_624_904,
                features=GoogLeNet.feature_info, adapt_state_dict=drop_aux_keys(("aux1.", "aux2.")),
                notes="defaults aux_logits=False, transform_input=True (torchvision's pretrained "
                      "configuration); aux_logits=True adds 6,379,984 parameters")
def googlenet(**kwargs):
    """torchvision's ``googlenet``."""
    return GoogLeNet(**kwargs)
