"""Inception v3, laid out like torchvision's ``models/inception.py``.

Parameter paths mirror torchvision's state_dict (``Mixed_5b.branch5x5_1.conv.weight`` is
``params/Mixed_5b/branch5x5_1/conv/kernel``).  In training with ``aux_logits=True`` (the
registered default, as in torchvision's checkpoint) the model returns
``InceptionOutputs(logits, aux_logits)``; in eval the logits only.  ``features_only=True``
returns ``Conv2d_2b_3x3`` (stride 2), ``Conv2d_4a_3x3`` (4), ``Mixed_5d`` (8), ``Mixed_6e`` (16)
and ``Mixed_7c`` (32).  The default ``transform_input=True`` is what torchvision's pretrained
weights expect; its random-weights builder defaults to False.  Inputs need at least 75x75.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import (BasicConv2d, Linear, adaptive_avg_pool2d, avg_pool2d, max_pool2d,
                              transform_input)
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.models._weights import drop_aux_keys
from jaxvision.registry import FeatureInfo, register_model

# torchvision's init_weights: trunc_normal_(std=m.stddev or 0.1, a=-2, b=2), i.e. truncated at
# 20 sigma (or more): a plain normal is the same distribution up to 1e-88.
_init = nn.initializers.normal


class InceptionOutputs(NamedTuple):
    logits: jax.Array
    aux_logits: Optional[jax.Array]


class _Block(nn.Module):
    dtype: Any = jnp.float32
    norm: str = "batch"

    def conv(self, features, kernel, name, stride=1, padding=0):
        return BasicConv2d(features, kernel, stride, padding, kernel_init=_init(0.1),
                           dtype=self.dtype, norm=self.norm, name=name)


class InceptionA(_Block):
    pool_features: int = 32

    @nn.compact
    def __call__(self, x, train=False):
        b1 = self.conv(64, 1, "branch1x1")(x, train)
        b5 = self.conv(48, 1, "branch5x5_1")(x, train)
        b5 = self.conv(64, 5, "branch5x5_2", padding=2)(b5, train)
        b3 = self.conv(64, 1, "branch3x3dbl_1")(x, train)
        b3 = self.conv(96, 3, "branch3x3dbl_2", padding=1)(b3, train)
        b3 = self.conv(96, 3, "branch3x3dbl_3", padding=1)(b3, train)
        bp = self.conv(self.pool_features, 1, "branch_pool")(avg_pool2d(x, 3, 1, 1), train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    @nn.compact
    def __call__(self, x, train=False):
        b3 = self.conv(384, 3, "branch3x3", stride=2)(x, train)
        bd = self.conv(64, 1, "branch3x3dbl_1")(x, train)
        bd = self.conv(96, 3, "branch3x3dbl_2", padding=1)(bd, train)
        bd = self.conv(96, 3, "branch3x3dbl_3", stride=2)(bd, train)
        return jnp.concatenate([b3, bd, max_pool2d(x, 3, 2)], axis=-1)


class InceptionC(_Block):
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x, train=False):
        c7 = self.channels_7x7
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        b1 = self.conv(192, 1, "branch1x1")(x, train)
        b7 = self.conv(c7, 1, "branch7x7_1")(x, train)
        b7 = self.conv(c7, row[0], "branch7x7_2", padding=row[1])(b7, train)
        b7 = self.conv(192, col[0], "branch7x7_3", padding=col[1])(b7, train)
        bd = self.conv(c7, 1, "branch7x7dbl_1")(x, train)
        for i, (c, (k, p)) in enumerate(zip((c7, c7, c7, 192), (col, row, col, row)), start=2):
            bd = self.conv(c, k, f"branch7x7dbl_{i}", padding=p)(bd, train)
        bp = self.conv(192, 1, "branch_pool")(avg_pool2d(x, 3, 1, 1), train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    @nn.compact
    def __call__(self, x, train=False):
        b3 = self.conv(192, 1, "branch3x3_1")(x, train)
        b3 = self.conv(320, 3, "branch3x3_2", stride=2)(b3, train)
        b7 = self.conv(192, 1, "branch7x7x3_1")(x, train)
        b7 = self.conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(b7, train)
        b7 = self.conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(b7, train)
        b7 = self.conv(192, 3, "branch7x7x3_4", stride=2)(b7, train)
        return jnp.concatenate([b3, b7, max_pool2d(x, 3, 2)], axis=-1)


class InceptionE(_Block):
    @nn.compact
    def __call__(self, x, train=False):
        def split(y, prefix):
            a = self.conv(384, (1, 3), f"{prefix}a", padding=(0, 1))(y, train)
            b = self.conv(384, (3, 1), f"{prefix}b", padding=(1, 0))(y, train)
            return jnp.concatenate([a, b], axis=-1)

        b1 = self.conv(320, 1, "branch1x1")(x, train)
        b3 = split(self.conv(384, 1, "branch3x3_1")(x, train), "branch3x3_2")
        bd = self.conv(448, 1, "branch3x3dbl_1")(x, train)
        bd = split(self.conv(384, 3, "branch3x3dbl_2", padding=1)(bd, train), "branch3x3dbl_3")
        bp = self.conv(192, 1, "branch_pool")(avg_pool2d(x, 3, 1, 1), train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    num_classes: int
    dtype: Any = jnp.float32
    norm: str = "batch"

    @nn.compact
    def __call__(self, x, train=False):
        if min(x.shape[1:3]) < 17:
            # torch fails here too (conv1's 5x5 kernel outgrows the pooled map)
            raise ValueError(
                f"inception_v3's AuxLogits needs Mixed_6e maps of at least 17x17 (inputs of about "
                f"299x299), got {tuple(x.shape[1:3])}; it runs at init and in training: use a "
                f"larger input or aux_logits=False")
        x = avg_pool2d(x, 5, 3)
        conv = lambda c, k, std, name: BasicConv2d(c, k, kernel_init=_init(std), dtype=self.dtype,
                                                   norm=self.norm, name=name)
        x = conv(128, 1, 0.1, "conv0")(x, train)
        x = conv(768, 5, 0.01, "conv1")(x, train)
        x = adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        return Linear(self.num_classes, 768, dtype=self.dtype, kernel_init=_init(0.001),
                      name="fc")(x)


class Inception3(nn.Module):
    num_classes: int = 1000
    aux_logits: bool = True
    transform_input: bool = True
    dropout: float = 0.5
    norm: str = "batch"  # "batch_eval" / "frozen" for freezing (BasicConv2d's BN, eps 0.001)
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    feature_info = (FeatureInfo("Conv2d_2b_3x3", 64, 2), FeatureInfo("Conv2d_4a_3x3", 192, 4),
                    FeatureInfo("Mixed_5d", 288, 8), FeatureInfo("Mixed_6e", 768, 16),
                    FeatureInfo("Mixed_7c", 2048, 32))
    # stem Conv2d_*; stages Mixed_5, 6, 7 (a..e); head fc and AuxLogits
    stage_layout = StageLayout(r"Conv2d_", tuple(f"Mixed_{i}[a-e]/" for i in (5, 6, 7)),
                               r"(fc|AuxLogits)/")

    @nn.compact
    def __call__(self, x, train: bool = False):
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"inception_v3 needs inputs of at least 75x75 (NHWC), got shape "
                             f"{tuple(x.shape)}")
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        # the aux head also runs at init so that eval-mode init creates every parameter
        with_aux = (self.aux_logits and self.num_classes > 0 and not self.features_only
                    and (train or self.is_initializing()))
        x = x.astype(self.dtype)
        if self.transform_input:
            x = transform_input(x)
        conv = lambda c, k, name, s=1, p=0: BasicConv2d(c, k, s, p, kernel_init=_init(0.1),
                                                        dtype=self.dtype, norm=self.norm,
                                                        name=name)
        x = conv(32, 3, "Conv2d_1a_3x3", 2)(x, train)
        x = conv(32, 3, "Conv2d_2a_3x3")(x, train)
        x = conv(64, 3, "Conv2d_2b_3x3", p=1)(x, train)
        if feats.add("Conv2d_2b_3x3", x):
            return feats.maps
        x = max_pool2d(x, 3, 2)
        x = conv(80, 1, "Conv2d_3b_1x1")(x, train)
        x = conv(192, 3, "Conv2d_4a_3x3")(x, train)
        if feats.add("Conv2d_4a_3x3", x):
            return feats.maps
        x = max_pool2d(x, 3, 2)
        d, nm = self.dtype, self.norm
        for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(d, nm, pool_features=pool, name=name)(x, train)
        if feats.add("Mixed_5d", x):
            return feats.maps
        x = InceptionB(d, nm, name="Mixed_6a")(x, train)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(d, nm, channels_7x7=c7, name=name)(x, train)
        if feats.add("Mixed_6e", x):
            return feats.maps
        aux = InceptionAux(self.num_classes, d, nm, name="AuxLogits")(x, train) if with_aux \
            else None
        x = InceptionD(d, nm, name="Mixed_7a")(x, train)
        x = InceptionE(d, nm, name="Mixed_7b")(x, train)
        x = InceptionE(d, nm, name="Mixed_7c")(x, train)
        if feats.add("Mixed_7c", x):
            return feats.maps
        x = adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        if self.num_classes <= 0:
            return x
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.num_classes, 2048, dtype=d, kernel_init=_init(0.1), name="fc")(x)
        if with_aux and train:
            return InceptionOutputs(x, aux)
        return x


@register_model("inception_v3", family="inception", torch_name="inception_v3",
                num_params=27_161_264, input_size=(299, 299), resize_size=342, crop_size=299,
                features=Inception3.feature_info, adapt_state_dict=drop_aux_keys(("AuxLogits.",)),
                notes="defaults aux_logits=True, transform_input=True (torchvision's pretrained "
                      "configuration); inputs of at least 75x75")
def inception_v3(**kwargs):
    """torchvision's ``inception_v3``."""
    return Inception3(**kwargs)
