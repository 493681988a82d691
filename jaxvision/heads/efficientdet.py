"""EfficientDet's class and box nets, exact to the ``effdet`` package's ``HeadNet``.

Every pyramid level goes through the same ``num_repeats`` separable 3x3 convs (``conv_rep_{r}``),
each followed by a BatchNorm of its own per level (``bn_rep_{r}_{level}/bn``, effdet's
repeat-first order) and SiLU, then one separable 3x3 predictor (``predict``, with bias). Outputs
are flattened per anchor in torchvision's (y, x, anchor) order, so RetinaNet's anchors, loss and
post-processing read them. Initialisation is effdet's: normal(sqrt(1 / fan_in)) kernels, the
class predictor's bias at a 0.01 prior.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.heads.dense_prediction import per_anchor, prior_bias
from jaxvision.layers.norm import BatchNorm
from jaxvision.layers.separable import SeparableConv2d

BN = {"epsilon": 1e-3, "momentum": 0.01}  # effdet's norm_kwargs
fan_in_normal = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class _BnSequential(nn.Module):
    """effdet's ``Sequential(bn=BatchNorm2d)`` around each of the head's BatchNorms."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        return BatchNorm(**BN, dtype=self.dtype, name="bn")(x, train)


class EfficientDetHead(nn.Module):
    """``features`` (a level per entry, all with the same channels) -> (N, sum H*W*A, outputs)."""

    num_outputs: int  # per anchor: the classes, or 4 box deltas
    num_anchors: int = 9
    num_repeats: int = 3
    prior_probability: Optional[float] = None  # the predictor's bias: this prior, else 0
    dtype: Any = None

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
        c = features[0].shape[-1]
        sep = dict(dw_init=fan_in_normal, pw_init=fan_in_normal, dtype=self.dtype)
        convs = [SeparableConv2d(c, 3, **sep, name=f"conv_rep_{r}")
                 for r in range(self.num_repeats)]
        predict = SeparableConv2d(self.num_anchors * self.num_outputs, 3, bias=True,
                                  bias_init=nn.initializers.zeros if self.prior_probability is None
                                  else prior_bias(self.prior_probability), **sep, name="predict")
        outs = []
        for level, x in enumerate(features):
            for r, conv in enumerate(convs):
                bn = _BnSequential(self.dtype, name=f"bn_rep_{r}_{level}")
                x = nn.silu(bn(conv(x), train))
            outs.append(per_anchor(predict(x), self.num_anchors))
        return jnp.concatenate(outs, axis=1).astype(jnp.float32)

