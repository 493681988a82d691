"""MaxViT, laid out like torchvision's ``models/maxvit.py``.

Parameter paths mirror torchvision's state_dict, e.g.
``blocks.0.layers.0.layers.MBconv.layers.conv_b.1.running_var`` is
``batch_stats/blocks_0/layers_0/layers/MBconv/layers/conv_b_1/var`` and
``blocks.0.layers.0.layers.window_attention.attn_layer.1.relative_position_bias_table`` keeps
torch's shape.  torch's ``relative_position_index`` buffers are computed here; the spec's
``adapt_state_dict`` checks a checkpoint's copies against ours and drops them.

As in torchvision the model is built for one ``input_size`` (224 by default): every block's
grid must be divisible by ``partition_size`` (checked as torchvision checks it), and the
input must have that size (torchvision's departition reshapes to the grid fixed at
construction).  Build ``input_size=(448, 448)`` etc. for another resolution.

``features_only=True`` returns ``stem`` (reduction 2) and ``stage1`` .. ``stage4`` (4 .. 32).
``num_classes=0`` returns the pooled embedding after ``classifier.2..4`` (LayerNorm, Linear,
Tanh): what the final bias-free Linear sees.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.errors import ConversionError
from jaxvision.layers import (Conv2d, Linear, SqueezeExcitation, avg_pool2d, layer_norm,
                              norm_factory)
from jaxvision.layers.attention import relative_position_index
from jaxvision.layers.params import param
from jaxvision.layers.stochastic_depth import StochasticDepth
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model

_init = nn.initializers.normal(0.02)  # torchvision's _init_weights: normal_(std=0.02)
_zeros = nn.initializers.zeros
_gelu = lambda x: nn.gelu(x, approximate=False)


def _conv_out(size, k=3, s=2, p=1):
    return tuple((n - k + 2 * p) // s + 1 for n in size)


def block_input_shapes(input_size, n_blocks):
    """The grid each block attends over (torchvision's ``_make_block_input_shapes``)."""
    shapes, shape = [], _conv_out(tuple(input_size))
    for _ in range(n_blocks):
        shape = _conv_out(shape)
        shapes.append(shape)
    return shapes


class MBConvLayers(nn.Module):
    """torch's ``MBconv.layers`` Sequential (pre_norm, conv_a, conv_b, squeeze_excitation,
    conv_c)."""

    mid: int
    squeeze: int
    out: int
    stride: int
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        bn = lambda name: norm_factory(self.norm, self.dtype, momentum=0.01, epsilon=1e-3)(
            name=name)
        conv = lambda c, k, s=1, p=0, g=1, b=False, name=None: Conv2d(
            c, k, s, p, groups=g, bias=b, dtype=self.dtype, kernel_init=_init, bias_init=_zeros,
            name=name)
        x = bn("pre_norm")(x, train)
        x = _gelu(bn("conv_a_1")(conv(self.mid, 1, name="conv_a_0")(x), train))
        x = conv(self.mid, 3, self.stride, 1, self.mid, name="conv_b_0")(x)
        x = _gelu(bn("conv_b_1")(x, train))
        x = SqueezeExcitation(self.squeeze, nn.silu, dtype=self.dtype, kernel_init=_init,
                              bias_init=_zeros, pool_dtype=jnp.float32,
                              name="squeeze_excitation")(x)
        return conv(self.out, 1, b=True, name="conv_c")(x)


class MBConv(nn.Module):
    out: int
    expansion_ratio: float
    squeeze_ratio: float
    stride: int
    p_stochastic: float = 0.0
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        res = x
        if self.stride != 1 or x.shape[-1] != self.out:
            # torch's proj: [AvgPool2d(3, 2, 1)] (stride 2 only) + 1x1 conv, so the conv is
            # proj.1 after a pool and proj.0 without one
            if self.stride == 2:
                res = avg_pool2d(res, 3, 2, 1)
            res = Conv2d(self.out, 1, bias=True, dtype=self.dtype, kernel_init=_init,
                         bias_init=_zeros, name=f"proj_{1 if self.stride == 2 else 0}")(res)
        y = MBConvLayers(int(self.out * self.expansion_ratio), int(self.out * self.squeeze_ratio),
                         self.out, self.stride, self.norm, self.dtype, name="layers")(x, train)
        return res + StochasticDepth(self.p_stochastic)(y, train)


class RelativePositionalMultiHeadAttention(nn.Module):
    feat_dim: int
    head_dim: int
    size: int  # partition size: sequences of size**2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, g, p, d = x.shape
        if self.feat_dim % self.head_dim:
            raise ValueError(f"feat_dim: {self.feat_dim} must be divisible by head_dim: "
                             f"{self.head_dim}")
        heads, dh = self.feat_dim // self.head_dim, self.head_dim
        qkv = Linear(3 * heads * dh, d, self.dtype, _init, _zeros, name="to_qkv")(x)
        q, k, v = (t.reshape(b, g, p, heads, dh).transpose(0, 1, 3, 2, 4)
                   for t in jnp.split(qkv, 3, axis=-1))
        # torchvision scales the keys by feat_dim**-0.5 (not head_dim**-0.5): mirrored
        k = k * jnp.asarray(self.feat_dim ** -0.5, k.dtype)
        table = param(self, "relative_position_bias_table", _init,
                      ((2 * self.size - 1) ** 2, heads))
        n = self.size * self.size
        bias = table[relative_position_index(self.size, self.size)]
        bias = bias.reshape(n, n, heads).transpose(2, 0, 1)[None]
        dot = jnp.einsum("bghid,bghjd->bghij", q, k).astype(jnp.float32)
        attn = jax.nn.softmax(dot + bias, axis=-1).astype(self.dtype)
        out = jnp.einsum("bghij,bghjd->bghid", attn, v).transpose(0, 1, 3, 2, 4)
        return Linear(d, heads * dh, self.dtype, _init, _zeros, name="merge")(
            out.reshape(b, g, p, d))


class PartitionAttentionLayer(nn.Module):
    channels: int
    head_dim: int
    partition_size: int
    partition_type: str  # "window" or "grid"
    mlp_ratio: int = 4
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    p_stochastic: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        if self.partition_type not in ("window", "grid"):
            raise ValueError("partition_type must be either 'grid' or 'window'")
        bsz, h, w, c = x.shape
        n_partitions = h // self.partition_size
        # window: P = partition_size pixels per window side; grid: P = n_partitions, and the
        # swap below makes the attended axis the partition_size**2 strided pixels
        p = self.partition_size if self.partition_type == "window" else n_partitions
        gh, gw = h // p, w // p
        x = x.reshape(bsz, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(
            bsz, gh * gw, p * p, c)
        if self.partition_type == "grid":
            x = jnp.swapaxes(x, -2, -3)
        sd = StochasticDepth(self.p_stochastic)  # one module, a fresh mask per call
        y = layer_norm(self.dtype, "attn_layer_0")(x)
        y = RelativePositionalMultiHeadAttention(c, self.head_dim, self.partition_size,
                                                 self.dtype, name="attn_layer_1")(y)
        y = nn.Dropout(self.attention_dropout, deterministic=not train)(y)
        x = x + sd(y, train)
        y = layer_norm(self.dtype, "mlp_layer_0")(x)
        y = _gelu(Linear(c * self.mlp_ratio, c, self.dtype, _init, _zeros, name="mlp_layer_1")(y))
        y = Linear(c, c * self.mlp_ratio, self.dtype, _init, _zeros, name="mlp_layer_3")(y)
        y = nn.Dropout(self.mlp_dropout, deterministic=not train)(y)
        x = x + sd(y, train)
        if self.partition_type == "grid":
            x = jnp.swapaxes(x, -2, -3)
        x = x.reshape(bsz, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(bsz, gh * p, gw * p, c)


class _Cfg(NamedTuple):
    """The hyper-parameters every MaxVit layer shares."""

    expansion_ratio: float
    squeeze_ratio: float
    head_dim: int
    partition_size: int
    mlp_ratio: int
    attention_dropout: float
    mlp_dropout: float
    norm: str
    dtype: Any


class MaxVitLayerSeq(nn.Module):
    """torch's ``MaxVitLayer.layers`` Sequential: MBconv, window_attention, grid_attention."""

    out: int
    stride: int
    p_stochastic: float
    cfg: _Cfg

    @nn.compact
    def __call__(self, x, train):
        c = self.cfg
        x = MBConv(self.out, c.expansion_ratio, c.squeeze_ratio, self.stride, self.p_stochastic,
                   c.norm, c.dtype, name="MBconv")(x, train)
        for kind in ("window", "grid"):
            x = PartitionAttentionLayer(self.out, c.head_dim, c.partition_size, kind,
                                        c.mlp_ratio, c.attention_dropout, c.mlp_dropout,
                                        self.p_stochastic, c.dtype,
                                        name=f"{kind}_attention")(x, train)
        return x


class MaxVitLayer(nn.Module):
    out: int
    stride: int
    p_stochastic: float
    cfg: _Cfg

    @nn.compact
    def __call__(self, x, train):
        return MaxVitLayerSeq(self.out, self.stride, self.p_stochastic, self.cfg,
                              name="layers")(x, train)


class MaxVitBlock(nn.Module):
    """``n`` layers, the first with stride 2 (torch's ``blocks.i.layers`` ModuleList)."""

    out: int
    p_stochastic: tuple[float, ...]
    cfg: _Cfg

    @nn.compact
    def __call__(self, x, train):
        for j, p in enumerate(self.p_stochastic):
            x = MaxVitLayer(self.out, 2 if j == 0 else 1, p, self.cfg, name=f"layers_{j}")(
                x, train)
        return x


class MaxVit(nn.Module):
    input_size: tuple[int, int] = (224, 224)
    stem_channels: int = 64
    partition_size: int = 7
    block_channels: Sequence[int] = (64, 128, 256, 512)
    block_layers: Sequence[int] = (2, 2, 5, 2)
    head_dim: int = 32
    stochastic_depth_prob: float = 0.2
    squeeze_ratio: float = 0.25
    expansion_ratio: float = 4
    mlp_ratio: int = 4
    mlp_dropout: float = 0.0
    attention_dropout: float = 0.0
    num_classes: int = 1000
    norm: str = "batch"
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    @property
    def feature_info(self):
        return (FeatureInfo("stem", self.stem_channels, 2),) + tuple(
            FeatureInfo(f"stage{i + 1}", c, 4 * 2 ** i) for i, c in enumerate(self.block_channels))

    # why a dense model (any input size) cannot stand on it (jaxvision.models._backbone)
    fixed_input_size = ("its relative-position tables are built for input_size, whose every "
                        "stage must split into partition_size windows")

    @property
    def image_size(self):
        # the size jaxvision.api builds its dummy input at (init, loading weights)
        return tuple(self.input_size)

    @property
    def stage_layout(self) -> StageLayout:
        return StageLayout(stem=r"stem_", head=r"classifier_", stages=tuple(
            f"blocks_{i}/" for i in range(len(self.block_channels))))

    def _check_sizes(self, x):
        shapes = block_input_shapes(self.input_size, len(self.block_channels))
        for idx, s in enumerate(shapes):
            if s[0] % self.partition_size or s[1] % self.partition_size:
                raise ValueError(
                    f"Input size {s} of block {idx} is not divisible by partition size "
                    f"{self.partition_size} (input_size={tuple(self.input_size)} gives block "
                    f"input sizes {shapes}); build the model with another input_size")
        if x.ndim != 4 or x.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"expected NHWC images of {self.input_size[0]}x"
                             f"{self.input_size[1]}x3 (the model's input_size, fixed as in "
                             f"torchvision), got shape {x.shape}; build the model with "
                             f"input_size=... for another resolution")

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check_sizes(x)
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        x = x.astype(self.dtype)
        c = self.stem_channels
        x = Conv2d(c, 3, 2, 1, dtype=self.dtype, kernel_init=_init, name="stem_0_0")(x)
        x = _gelu(norm_factory(self.norm, self.dtype, momentum=0.01, epsilon=1e-3)(
            name="stem_0_1")(x, train))
        x = Conv2d(c, 3, 1, 1, bias=True, dtype=self.dtype, kernel_init=_init, bias_init=_zeros,
                   name="stem_1_0")(x)
        if feats.add("stem", x):
            return feats.maps
        probs = np.linspace(0, self.stochastic_depth_prob, sum(self.block_layers)).tolist()
        cfg = _Cfg(self.expansion_ratio, self.squeeze_ratio, self.head_dim, self.partition_size,
                   self.mlp_ratio, self.attention_dropout, self.mlp_dropout, self.norm,
                   self.dtype)
        i = 0
        for b, (out, n) in enumerate(zip(self.block_channels, self.block_layers)):
            x = MaxVitBlock(out, tuple(probs[i:i + n]), cfg, name=f"blocks_{b}")(x, train)
            i += n
            if feats.add(f"stage{b + 1}", x):
                return feats.maps
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        d = self.block_channels[-1]
        x = layer_norm(self.dtype, "classifier_2")(x)
        x = jnp.tanh(Linear(d, d, self.dtype, _init, _zeros, name="classifier_3")(x))
        if self.num_classes <= 0:
            return x
        return Linear(self.num_classes, d, self.dtype, _init, bias=False, name="classifier_5")(x)


def adapt_state_dict(state_dict: dict, model) -> dict:
    """Drop torch's ``relative_position_index`` buffers after checking they are the ones this
    model computes (weights for another partition size fail here, naming the tensor)."""
    size = model.partition_size
    want = relative_position_index(size, size).reshape(size * size, size * size)
    for key in [k for k in state_dict if k.endswith(".relative_position_index")]:
        got = state_dict.pop(key)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise ConversionError(f"{key}: a buffer of shape {tuple(got.shape)} that differs from "
                                  f"this model's (partition_size {size}, shape {want.shape}): "
                                  f"the weights are for another partition size")
    return state_dict


def export_state_dict(state_dict: dict, model) -> dict:
    """torchvision's ``relative_position_index`` beside each relative position bias table."""
    size = model.partition_size
    index = relative_position_index(size, size).reshape(size * size, size * size)
    for key in [k for k in state_dict if k.endswith(".relative_position_bias_table")]:
        state_dict[key[: -len("bias_table")] + "index"] = index.astype(np.int64)
    return state_dict


@register_model("maxvit_t", family="maxvit", torch_name="maxvit_t", num_params=30_919_624,
                input_size=(224, 224), resize_size=224, crop_size=224, interpolation="bicubic",
                features=(FeatureInfo("stem", 64, 2), FeatureInfo("stage1", 64, 4),
                          FeatureInfo("stage2", 128, 8), FeatureInfo("stage3", 256, 16),
                          FeatureInfo("stage4", 512, 32)),
                adapt_state_dict=adapt_state_dict, export_state_dict=export_state_dict,
                notes="input size fixed at construction (input_size=(224, 224)), as torchvision")
def maxvit_t(**kwargs):
    """torchvision's ``maxvit_t`` (any field may be overridden, e.g. input_size=(448, 448))."""
    return MaxVit(**kwargs)
