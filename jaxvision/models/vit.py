"""Vision Transformer, laid out like torchvision's ``models/vision_transformer.py``.

Parameter paths mirror torchvision's state_dict: ``encoder.layers.encoder_layer_0.ln_1.weight``
is ``params/encoder/layers/encoder_layer_0/ln_1/scale``; ``class_token`` is a top-level raw
param and the attention's fused ``in_proj_weight`` / ``in_proj_bias`` keep torch's layout.

The input must be ``image_size`` square, as in torchvision (the position embedding has one row
per patch).  Weights trained at another resolution load through the spec's
``adapt_state_dict``, which resizes ``encoder.pos_embedding`` exactly as torchvision's
``interpolate_embeddings`` does (bicubic, align_corners=True), in numpy, without torch.

``features_only=True``: ``out_indices`` index the encoder blocks (negative from the end).  For
each chosen block ``i`` the dict holds

    ``block{i}``         NHWC map of the patch tokens, (B, H/p, W/p, D)
    ``block{i}_tokens``  the block's whole output, class token first, (B, N+1, D)

``feature_info`` names only the maps (``block{i}``, channels D, reduction p); each map has
its ``_tokens`` companion.  ``num_classes=0`` returns the final class-token embedding (after
``encoder.ln``, before the heads).
"""
from __future__ import annotations

from functools import partial
import math
from typing import Any, Optional, Sequence

import numpy as np
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.errors import ConversionError
from jaxvision.layers import Conv2d, Linear, layer_norm, trunc_normal
from jaxvision.layers.attention import MultiheadAttention
from jaxvision.layers.grad_barrier import grad_barrier
from jaxvision.layers.lowering import dense_dot_general
from jaxvision.layers.params import param
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model


_layer_norm = partial(layer_norm, eps=1e-6)


_xavier = nn.initializers.xavier_uniform()
_tiny_normal = nn.initializers.normal(1e-6)  # torchvision's MLPBlock bias init


class EncoderBlock(nn.Module):
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        # the residual stream's gradient written out once per block, not recomputed in each consumer
        inputs = grad_barrier(inputs)
        x = _layer_norm(self.dtype, "ln_1")(inputs)
        x = MultiheadAttention(self.hidden_dim, self.num_heads, self.attention_dropout,
                               self.dtype, name="self_attention")(x, train)
        x = nn.Dropout(self.dropout, deterministic=not train)(x) + inputs
        y = _layer_norm(self.dtype, "ln_2")(x)
        # torchvision's MLPBlock: Linear, GELU (exact), Dropout, Linear, Dropout; torch's
        # ``mlp.0`` / ``mlp.3`` become ``mlp_0`` / ``mlp_3`` under the numeric-suffix rule
        drop = nn.Dropout(self.dropout, deterministic=not train)
        d, m = self.hidden_dim, self.mlp_dim
        # dense_dot_general: the kernel gradients read the residual stream's gradient in place
        y = Linear(m, d, self.dtype, _xavier, _tiny_normal, name="mlp_0",
                   dot_general=dense_dot_general)(y)
        y = drop(nn.gelu(y, approximate=False))
        y = drop(Linear(d, m, self.dtype, _xavier, _tiny_normal, name="mlp_3",
                        dot_general=dense_dot_general)(y))
        return x + y


class EncoderLayers(nn.Module):
    """torch's ``encoder.layers`` Sequential; returns the last output and the chosen blocks'."""

    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32
    keep: Optional[Sequence[int]] = None  # blocks whose output is returned; stop after the last

    @nn.compact
    def __call__(self, x, train: bool = False):
        kept = {}
        last = self.num_layers - 1 if self.keep is None else max(self.keep)
        for i in range(last + 1):
            block = EncoderBlock(self.num_heads, self.hidden_dim, self.mlp_dim, self.dropout,
                                 self.attention_dropout, self.dtype, name=f"encoder_layer_{i}")
            x = block(x, train)
            if self.keep is not None and i in self.keep:
                kept[i] = x
        return x, kept


class Encoder(nn.Module):
    seq_length: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32
    keep: Optional[Sequence[int]] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        pos = param(self, "pos_embedding", trunc_normal(0.02),
                    (1, self.seq_length, self.hidden_dim))
        x = nn.Dropout(self.dropout, deterministic=not train)(x + pos.astype(self.dtype))
        x, kept = EncoderLayers(self.num_layers, self.num_heads, self.hidden_dim, self.mlp_dim,
                                self.dropout, self.attention_dropout, self.dtype, self.keep,
                                name="layers")(x, train)
        if self.keep is not None:
            return x, kept
        return _layer_norm(self.dtype, "ln")(x), kept


class Heads(nn.Module):
    num_classes: int
    hidden_dim: int
    representation_size: Optional[int] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.hidden_dim
        if self.representation_size is not None:
            r = self.representation_size
            x = Linear(r, d, self.dtype, trunc_normal(math.sqrt(1 / d)), nn.initializers.zeros,
                       name="pre_logits")(x)
            x, d = jnp.tanh(x), r
        zeros = nn.initializers.zeros
        return Linear(self.num_classes, d, self.dtype, zeros, zeros, name="head")(x)


class VisionTransformer(nn.Module):
    image_size: int
    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    num_classes: int = 1000
    representation_size: Optional[int] = None
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None
    # why a dense model (any input size) cannot stand on it (jaxvision.models._backbone)
    fixed_input_size = "its position embedding has one row per patch of an image_size square"

    @property
    def stage_layout(self) -> StageLayout:
        """The patch embedding, class token and position embedding are the stem; each encoder
        block a stage; the final LayerNorm none; ``heads`` the head."""
        return StageLayout(r"(conv_proj/|class_token$|encoder/pos_embedding$)",
                           tuple(f"encoder/layers/encoder_layer_{i}/"
                                 for i in range(self.num_layers)), r"heads/")

    @property
    def feature_info(self):
        return tuple(FeatureInfo(f"block{i}", self.hidden_dim, self.patch_size)
                     for i in range(self.num_layers))

    @nn.compact
    def __call__(self, x, train: bool = False):
        p, d = self.patch_size, self.hidden_dim
        if self.image_size % p:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size "
                             f"({p})")
        if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected NHWC images of {self.image_size}x{self.image_size} (the model's "
                f"image_size), got shape {x.shape}; build the model with image_size=... for "
                "another resolution (loading weights then resizes pos_embedding)")
        keep = None
        if self.features_only:
            names = FeatureCollector(self.feature_info, True, self.out_indices).wanted
            keep = tuple(sorted({int(n[len("block"):]) for n in names}))
        n_h = n_w = self.image_size // p
        x = x.astype(self.dtype)
        x = Conv2d(d, p, p, bias=True, dtype=self.dtype,
                   kernel_init=trunc_normal(math.sqrt(1 / (3 * p * p))),
                   bias_init=nn.initializers.zeros, name="conv_proj")(x)
        x = x.reshape(x.shape[0], n_h * n_w, d)  # NHWC flattens row-major like torch's (n_h, n_w)
        cls = param(self, "class_token", nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, d)), x], 1)
        x, kept = Encoder(n_h * n_w + 1, self.num_layers, self.num_heads, d, self.mlp_dim,
                          self.dropout, self.attention_dropout, self.dtype, keep,
                          name="encoder")(x, train)
        if self.features_only:
            out = {}
            for i, tokens in kept.items():
                out[f"block{i}"] = tokens[:, 1:].reshape(tokens.shape[0], n_h, n_w, d)
                out[f"block{i}_tokens"] = tokens
            return out
        x = x[:, 0]
        if self.num_classes <= 0:
            return x
        return Heads(self.num_classes, d, self.representation_size, self.dtype, name="heads")(x)


# ---- loading weights trained at another resolution -------------------------------------------

def _cubic_weights(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """(out, in) matrix of torch's upsample_bicubic2d with align_corners=True along one axis:
    Keys' cubic with A=-0.75, taps outside the input clamped to its border."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    w = np.zeros((out_size, in_size), np.float64)
    for o in range(out_size):
        real = scale * o
        i0 = math.floor(real)
        t = real - i0
        coeffs = (((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                  ((a + 2) * t - (a + 3)) * t * t + 1,
                  ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                  ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a)
        for k, c in enumerate(coeffs):
            w[o, min(max(i0 - 1 + k, 0), in_size - 1)] += c
    return w


def interpolate_pos_embedding(pos: np.ndarray, new_grid: int) -> np.ndarray:
    """(1, 1 + n*n, D) -> (1, 1 + new_grid**2, D); the class token's row is kept as is."""
    pos = np.asarray(pos)
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise ConversionError(f"encoder.pos_embedding: expected shape (1, 1 + n*n, hidden_dim), "
                              f"got {pos.shape}")
    n = math.isqrt(pos.shape[1] - 1)
    if n * n != pos.shape[1] - 1:
        raise ConversionError(f"encoder.pos_embedding: {pos.shape[1] - 1} patch positions is not "
                              "a square grid, cannot resize it")
    if n == new_grid:
        return pos
    grid = pos[0, 1:].astype(np.float64).reshape(n, n, -1)
    wy = wx = _cubic_weights(n, new_grid)
    new = np.einsum("ab,bcd,ec->aed", wy, grid, wx).reshape(1, new_grid * new_grid, -1)
    return np.concatenate([pos[:, :1], new.astype(pos.dtype)], axis=1)


def adapt_state_dict(state_dict: dict, model) -> dict:
    """Resize ``encoder.pos_embedding`` to ``model``'s grid (torchvision's
    ``interpolate_embeddings``), so weights trained at one image_size load at another."""
    key = "encoder.pos_embedding"
    if key not in state_dict:
        return state_dict  # the converter reports what is missing
    state_dict[key] = interpolate_pos_embedding(state_dict[key],
                                                model.image_size // model.patch_size)
    return state_dict


# ---- the registered models --------------------------------------------------------------------

_VARIANTS = {
    # name: (patch, layers, heads, hidden, mlp, torchvision params at 224, resize, interpolation)
    "vit_b_16": (16, 12, 12, 768, 3072, 86_567_656, 256, "bilinear"),
    "vit_b_32": (32, 12, 12, 768, 3072, 88_224_232, 256, "bilinear"),
    "vit_l_16": (16, 24, 16, 1024, 4096, 304_326_632, 242, "bilinear"),
    "vit_l_32": (32, 24, 16, 1024, 4096, 306_535_400, 256, "bilinear"),
    # torchvision has no IMAGENET1K_V1 for vit_h_14; its 224 weights are SWAG_LINEAR_V1
    "vit_h_14": (14, 32, 16, 1280, 5120, 632_045_800, 224, "bicubic"),
}


def _register(name, patch, layers, heads, hidden, mlp, num_params, resize, interpolation):
    def build(image_size: int = 224, **kwargs):
        # any architecture field may be overridden (tests build 2-layer twins of the big ones)
        arch = dict(patch_size=patch, num_layers=layers, num_heads=heads, hidden_dim=hidden,
                    mlp_dim=mlp)
        return VisionTransformer(image_size=image_size, **{**arch, **kwargs})

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}`` (image_size=224 unless given)."
    features = tuple(FeatureInfo(f"block{i}", hidden, patch) for i in range(layers))
    register_model(name, family="vit", torch_name=name, num_params=num_params,
                   resize_size=resize, crop_size=224, interpolation=interpolation,
                   features=features, adapt_state_dict=adapt_state_dict,
                   notes="features_only maps block{i} come with block{i}_tokens (B, N+1, D)")(build)


for _name, _args in _VARIANTS.items():
    _register(_name, *_args)
