"""Self-attention laid out like ``torch.nn.MultiheadAttention`` (batch first).

The fused input projection is kept as torch stores it -- raw params ``in_proj_weight`` (3D, D)
and ``in_proj_bias`` (3D,) -- so the generic converter copies them untouched; ``out_proj`` is
a Dense (torch's ``out_proj.weight`` is transposed like any Linear).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.conv import Linear
from jaxvision.layers.lowering import dense_dot_general
from jaxvision.layers.params import param


def relative_position_index(wh: int, ww: int) -> np.ndarray:
    """torchvision's ``relative_position_index`` buffer of windowed attention (Swin, MaxViT):
    (wh*ww)**2 indices into the relative position bias table."""
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    return rel.sum(-1).reshape(-1)


def xavier_uniform_fused(key, shape, dtype=jnp.float32):
    """torch's ``xavier_uniform_`` on the (3D, D) in_proj_weight: fan_in D, fan_out 3D."""
    fan_out, fan_in = shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class MultiheadAttention(nn.Module):
    """Self-attention over (B, N, D) tokens; softmax in float32 whatever the compute dtype."""

    embed_dim: int
    num_heads: int
    dropout: float = 0.0  # on the attention weights, as torch's ``dropout`` argument
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        d, h = self.embed_dim, self.num_heads
        if d % h:
            raise ValueError(f"embed_dim ({d}) must be divisible by num_heads ({h})")
        if x.shape[-1] != d:
            raise ValueError(f"expected tokens with last dimension embed_dim={d}, got {x.shape}")
        w = param(self, "in_proj_weight", xavier_uniform_fused, (3 * d, d))
        b = param(self, "in_proj_bias", nn.initializers.zeros, (3 * d,))
        x = x.astype(self.dtype)
        qkv = jnp.einsum("bnd,ed->bne", x, w.astype(self.dtype)) + b.astype(self.dtype)
        bsz, n = x.shape[:2]
        q, k, v = jnp.split(qkv.reshape(bsz, n, 3, h, d // h), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (B, N, H, hd)
        # torch scales q before the product; doing the same keeps the rounding alike
        q = q * jnp.asarray(1.0 / math.sqrt(d // h), self.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        if train and self.dropout > 0:
            attn = nn.Dropout(self.dropout, deterministic=False)(attn)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn.astype(self.dtype), v).reshape(bsz, n, d)
        # torch's MultiheadAttention zeroes out_proj.bias after the Linear's default init
        return Linear(d, d, dtype=self.dtype, bias_init=nn.initializers.zeros,
                      name="out_proj", dot_general=dense_dot_general)(out)
