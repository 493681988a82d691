"""Swin Transformer V1 and V2, laid out like torchvision's ``models/swin_transformer.py``.

Parameter paths mirror torchvision's state_dict: ``features.1.0.attn.qkv.weight`` is
``params/features_1_0/attn/qkv/kernel``; ``relative_position_bias_table`` and V2's
``logit_scale`` (heads, 1, 1) keep torch's shapes.  torch's buffers ``relative_position_index``
and V2's ``relative_coords_table`` are computed here, not loaded: ``adapt_state_dict`` checks
that a checkpoint's copies equal ours (same window size) and drops them.

Inputs of any size (at least the patch size) work as in torchvision: each window attention pads
its map on the bottom/right to a multiple of the window, the shift is dropped along an axis the
window covers, and patch merging pads odd sides.

``features_only=True`` returns ``stage1`` .. ``stage4`` (NHWC, as torchvision's features already
are; reductions 4, 8, 16, 32, sides rounded up).  ``num_classes=0`` returns the pooled
embedding after the final ``norm``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.errors import ConversionError
from jaxvision.layers import Conv2d, Linear, layer_norm, trunc_normal
from jaxvision.layers.attention import relative_position_index
from jaxvision.layers.params import param
from jaxvision.layers.stochastic_depth import StochasticDepth
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model

_init = trunc_normal(0.02)
_zeros = nn.initializers.zeros


def relative_coords_table(wh: int, ww: int) -> np.ndarray:
    """V2's ``relative_coords_table`` buffer (1, 2wh-1, 2ww-1, 2): log-spaced offsets, float32
    step by step as torch computes it."""
    h = np.arange(-(wh - 1), wh, dtype=np.float32)
    w = np.arange(-(ww - 1), ww, dtype=np.float32)
    t = np.stack(np.meshgrid(h, w, indexing="ij")).transpose(1, 2, 0)[None].copy()
    t[..., 0] /= np.float32(wh - 1)
    t[..., 1] /= np.float32(ww - 1)
    t *= np.float32(8)
    return (np.sign(t) * np.log2(np.abs(t) + np.float32(1)) / np.float32(3)).astype(np.float32)


def _shift_mask(pad_h, pad_w, window, shift) -> np.ndarray:
    """torchvision's attention mask (num_windows, L, L): 0 within a region, -100 across.  Built
    with the same python slices, including the case of a shift along one axis only."""
    (wh, ww), (sh, sw) = window, shift
    mask = np.zeros((pad_h, pad_w), np.float32)
    count = 0
    for h in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w in ((0, -ww), (-ww, -sw), (-sw, None)):
            mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    mask = mask.reshape(pad_h // wh, wh, pad_w // ww, ww).transpose(0, 2, 1, 3)
    mask = mask.reshape(-1, wh * ww)
    diff = mask[:, None, :] - mask[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0))


class QKV(nn.Module):
    """torch's ``qkv`` Linear; V2 ignores the key's third of the bias (torchvision zeroes a copy
    of it in every forward, so the parameter exists, loads and never trains)."""

    dim: int
    zero_key_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = param(self, "kernel", _init, (self.dim, 3 * self.dim))
        bias = param(self, "bias", _zeros, (3 * self.dim,))
        if self.zero_key_bias:
            bias = bias * jnp.repeat(jnp.array([1.0, 0.0, 1.0], jnp.float32), self.dim)
        return x @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class ShiftedWindowAttention(nn.Module):
    dim: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    num_heads: int
    attention_dropout: float = 0.0
    dropout: float = 0.0
    v2: bool = False
    dtype: Any = jnp.float32

    def _position_bias(self):
        (wh, ww), heads = self.window_size, self.num_heads
        n = wh * ww
        index = relative_position_index(wh, ww)
        if self.v2:
            coords = jnp.asarray(relative_coords_table(wh, ww))
            hidden = nn.relu(Linear(512, 2, jnp.float32, _init, _zeros, name="cpb_mlp_0")(coords))
            table = Linear(heads, 512, jnp.float32, _init, bias=False, name="cpb_mlp_2")(hidden)
            table = table.reshape(-1, heads)
        else:
            table = param(self, "relative_position_bias_table", _init,
                          ((2 * wh - 1) * (2 * ww - 1), heads))
        bias = table[index].reshape(n, n, heads).transpose(2, 0, 1)[None]
        return 16 * jax.nn.sigmoid(bias) if self.v2 else bias

    @nn.compact
    def __call__(self, x, train: bool = False):
        b, h, w, c = x.shape
        (wh, ww), heads = self.window_size, self.num_heads
        pad_r, pad_b = (ww - w % ww) % ww, (wh - h % wh) % wh
        x = jnp.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
        ph, pw = h + pad_b, w + pad_r
        # no shift along an axis the window already covers
        shift = (0 if wh >= ph else self.shift_size[0], 0 if ww >= pw else self.shift_size[1])
        shifted = sum(shift) > 0
        if shifted:
            x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
        nw, n = (ph // wh) * (pw // ww), wh * ww
        x = x.reshape(b, ph // wh, wh, pw // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b * nw, n, c)

        qkv = QKV(c, self.v2, self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b * nw, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.v2:  # scaled cosine attention
            unit = lambda t: t / jnp.maximum(jnp.sqrt(jnp.sum(t * t, -1, keepdims=True)), 1e-12)
            attn = unit(q) @ jnp.swapaxes(unit(k), -2, -1)
            logit_scale = param(self, "logit_scale", nn.initializers.constant(math.log(10.0)),
                                (heads, 1, 1))
            attn = attn * jnp.exp(jnp.minimum(logit_scale, math.log(100.0))).astype(attn.dtype)
        else:
            q = q * jnp.asarray((c // heads) ** -0.5, q.dtype)
            attn = q @ jnp.swapaxes(k, -2, -1)
        attn = attn.astype(jnp.float32) + self._position_bias()
        if shifted:
            mask = _shift_mask(ph, pw, self.window_size, shift)
            attn = attn.reshape(b, nw, heads, n, n) + mask[None, :, None]
            attn = attn.reshape(b * nw, heads, n, n)
        attn = jax.nn.softmax(attn, axis=-1)
        attn = nn.Dropout(self.attention_dropout, deterministic=not train)(attn)
        x = (attn.astype(self.dtype) @ v).transpose(0, 2, 1, 3).reshape(b * nw, n, c)
        x = Linear(c, c, self.dtype, _init, _zeros, name="proj")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)

        x = x.reshape(b, ph // wh, pw // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, ph, pw, c)
        if shifted:
            x = jnp.roll(x, shift, axis=(1, 2))
        return x[:, :h, :w]


class SwinTransformerBlock(nn.Module):
    dim: int
    num_heads: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth_prob: float = 0.0
    v2: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        d, hidden = self.dim, int(self.dim * self.mlp_ratio)
        sd = StochasticDepth(self.stochastic_depth_prob)  # one module, a fresh mask per call
        attn = ShiftedWindowAttention(d, self.window_size, self.shift_size, self.num_heads,
                                      self.attention_dropout, self.dropout, self.v2, self.dtype,
                                      name="attn")
        norm1, norm2 = layer_norm(self.dtype, "norm1"), layer_norm(self.dtype, "norm2")

        def mlp(y):  # torchvision's MLP: 0 Linear, 1 GELU, 2 Dropout, 3 Linear, 4 Dropout
            drop = nn.Dropout(self.dropout, deterministic=not train)
            y = Linear(hidden, d, self.dtype, _init, _zeros, name="mlp_0")(y)
            y = drop(nn.gelu(y, approximate=False))
            return drop(Linear(d, hidden, self.dtype, _init, _zeros, name="mlp_3")(y))

        if self.v2:  # V2 normalises the branch's output instead of its input
            x = x + sd(norm1(attn(x, train)), train)
            return x + sd(norm2(mlp(x)), train)
        x = x + sd(attn(norm1(x), train), train)
        return x + sd(mlp(norm2(x)), train)


class PatchMerging(nn.Module):
    dim: int
    v2: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h, w = x.shape[1:3]
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                             x[:, 1::2, 1::2]], -1)
        reduction = Linear(2 * self.dim, 4 * self.dim, self.dtype, _init, bias=False,
                           name="reduction")
        if self.v2:
            return layer_norm(self.dtype, "norm")(reduction(x))
        return reduction(layer_norm(self.dtype, "norm")(x))


class SwinTransformer(nn.Module):
    patch_size: tuple[int, int]
    embed_dim: int
    depths: Sequence[int]
    num_heads: Sequence[int]
    window_size: tuple[int, int]
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth_prob: float = 0.1
    num_classes: int = 1000
    v2: bool = False
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    @property
    def feature_info(self):
        p = self.patch_size[0]
        return tuple(FeatureInfo(f"stage{i + 1}", self.embed_dim * 2 ** i, p * 2 ** i)
                     for i in range(len(self.depths)))

    @property
    def stage_layout(self) -> StageLayout:
        # stage k: its blocks (features_{2k-1}_j) and, from stage 2 on, the patch merging
        # before it (features_{2k-2}, one module)
        stages = tuple(f"features_{2 * k - 1}_" if k == 1 else
                       f"features_({2 * k - 1}_|{2 * k - 2}/)"
                       for k in range(1, len(self.depths) + 1))
        return StageLayout(stem=r"features_0_", stages=stages, head=r"head/")

    @nn.compact
    def __call__(self, x, train: bool = False):
        ph, pw = self.patch_size
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] < ph or x.shape[2] < pw:
            raise ValueError(f"expected NHWC images with 3 channels and sides of at least the "
                             f"patch size {self.patch_size}, got shape {x.shape}")
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        x = x.astype(self.dtype)
        x = Conv2d(self.embed_dim, (ph, pw), (ph, pw), bias=True, dtype=self.dtype,
                   in_features=3, name="features_0_0")(x)
        x = layer_norm(self.dtype, "features_0_2")(x)
        total, block_id = sum(self.depths), 0
        for s, depth in enumerate(self.depths):
            dim = self.embed_dim * 2 ** s
            for j in range(depth):
                sd = self.stochastic_depth_prob * float(block_id) / (total - 1)
                shift = (0, 0) if j % 2 == 0 else tuple(w // 2 for w in self.window_size)
                x = SwinTransformerBlock(dim, self.num_heads[s], tuple(self.window_size), shift,
                                         self.mlp_ratio, self.dropout, self.attention_dropout,
                                         sd, self.v2, self.dtype, name=f"features_{2 * s + 1}_{j}")(
                    x, train)
                block_id += 1
            if feats.add(f"stage{s + 1}", x):
                return feats.maps
            if s < len(self.depths) - 1:
                x = PatchMerging(dim, self.v2, self.dtype, name=f"features_{2 * s + 2}")(x)
        x = layer_norm(self.dtype, "norm")(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        if self.num_classes <= 0:
            return x
        c = self.embed_dim * 2 ** (len(self.depths) - 1)
        return Linear(self.num_classes, c, self.dtype, _init, _zeros, name="head")(x)


def adapt_state_dict(state_dict: dict, model) -> dict:
    """Drop torch's position buffers after checking they are the ones this model computes (a
    checkpoint for another window size fails here, naming the tensor)."""
    wh, ww = model.window_size
    expected = {"relative_position_index": relative_position_index(wh, ww),
                "relative_coords_table": relative_coords_table(wh, ww)}
    for key in [k for k in state_dict if k.rsplit(".", 1)[-1] in expected]:
        want = expected[key.rsplit(".", 1)[-1]]
        got = state_dict.pop(key)
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-6):
            raise ConversionError(f"{key}: a buffer of shape {tuple(got.shape)} that differs from "
                                  f"this model's (window {model.window_size}, shape "
                                  f"{want.shape}): the weights are for another window size")
    return state_dict


def export_state_dict(state_dict: dict, model) -> dict:
    """torchvision's position buffers beside each attention's bias table (V1) or MLP (V2)."""
    wh, ww = model.window_size
    for key in list(state_dict):
        for ending in (".relative_position_bias_table", ".cpb_mlp.0.weight"):
            if key.endswith(ending):
                attn = key[: -len(ending)]
                state_dict[f"{attn}.relative_position_index"] = relative_position_index(
                    wh, ww).astype(np.int64)
                if model.v2:
                    state_dict[f"{attn}.relative_coords_table"] = relative_coords_table(wh, ww)
    return state_dict


def _register(name, *, embed, depths, heads, window, sd_prob, v2, num_params, resize, crop):
    def build(**kwargs):
        # any field may be overridden (tests build reduced-depth twins with depths=...)
        arch = dict(patch_size=(4, 4), embed_dim=embed, depths=depths, num_heads=heads,
                    window_size=(window, window), stochastic_depth_prob=sd_prob, v2=v2)
        return SwinTransformer(**{**arch, **kwargs})

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}`` (stochastic_depth_prob={sd_prob})."
    features = tuple(FeatureInfo(f"stage{i + 1}", embed * 2 ** i, 4 * 2 ** i) for i in range(4))
    register_model(name, family="swin", torch_name=name, num_params=num_params,
                   input_size=(crop, crop), resize_size=resize, crop_size=crop,
                   interpolation="bicubic", features=features,
                   adapt_state_dict=adapt_state_dict,
                   export_state_dict=export_state_dict)(build)


# torchvision's builders: the architecture, then its weights' parameter count and transforms
_register("swin_t", embed=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7, sd_prob=0.2,
          v2=False, num_params=28_288_354, resize=232, crop=224)
_register("swin_s", embed=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24), window=7, sd_prob=0.3,
          v2=False, num_params=49_606_258, resize=246, crop=224)
_register("swin_b", embed=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32), window=7, sd_prob=0.5,
          v2=False, num_params=87_768_224, resize=238, crop=224)
_register("swin_v2_t", embed=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=8, sd_prob=0.2,
          v2=True, num_params=28_351_570, resize=260, crop=256)
_register("swin_v2_s", embed=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24), window=8,
          sd_prob=0.3, v2=True, num_params=49_737_442, resize=260, crop=256)
_register("swin_v2_b", embed=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32), window=8,
          sd_prob=0.5, v2=True, num_params=87_930_848, resize=272, crop=256)
