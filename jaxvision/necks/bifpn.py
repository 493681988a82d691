"""BiFPN (EfficientDet), exact to the ``effdet`` package's ``BiFpn`` (rwightman's
efficientdet-pytorch, ``efficientdet_d0``'s settings: timm's symmetric padding, no redundant bias).

Levels: the input maps (highest resolution first, the ``feature_info`` order), then extra
coarser levels up to ``num_levels``, each made from the previous one by ``resample_{level}``
(1x1 conv + BN where the channels differ, then max-pool). A cell (``cell_{r}``, ``num_repeats``
of them) is effdet's ``bifpn_config``: a top-down pass then a bottom-up pass, each node
(``fnode_{i}``) fusing its inputs, each resampled to the node's level (``combine/resample_{id}``:
1x1 conv + BN where the channels differ; max-pool with kernel stride + 1 to shrink; nearest
to grow), with fast normalised weights ``relu(w_i) / (sum relu(w) + 1e-4)`` (``edge_weights``),
then SiLU and a separable 3x3 conv + BN (``after_combine/conv``). A cell returns the newest map
of every level.

effdet derives every level's size from its configured image size by ceil-halving; here each
level has the size of its input map (the same sizes for a backbone that halves with ceil, as
EfficientNet and ResNet do, and any input size works). Parameter paths mirror effdet's
state_dict (``cell.0.fnode.3.combine.edge_weights`` -> ``cell_0/fnode_3/combine/edge_weights``),
so the generic converter loads it key for key.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.conv import Conv2d
from jaxvision.layers.interpolate import interpolate
from jaxvision.layers.norm import BatchNorm
from jaxvision.layers.params import param
from jaxvision.layers.pool import max_pool2d
from jaxvision.layers.separable import SeparableConv2d

WEIGHT_METHODS = ("fastattn", "attn", "sum")
BN = {"epsilon": 1e-3, "momentum": 0.01}  # effdet's norm_kwargs (TF's BN)
# effdet's _init_weight outside the heads: glorot uniform, fans of a depthwise kernel per group
glorot_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
depthwise_glorot_uniform = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def bifpn_nodes(num_levels: int) -> list[tuple[int, tuple[int, ...]]]:
    """(level, input ids) of each node of a cell, as effdet's ``bifpn_config``: ids 0..L-1 are
    the cell's inputs, node i gets id L + i."""
    ids = {level: [level] for level in range(num_levels)}
    nodes = []
    for level in range(num_levels - 2, -1, -1):  # top-down
        nodes.append((level, (ids[level][-1], ids[level + 1][-1])))
        ids[level].append(num_levels + len(nodes) - 1)
    for level in range(1, num_levels):  # bottom-up
        nodes.append((level, (*ids[level], ids[level - 1][-1])))
        ids[level].append(num_levels + len(nodes) - 1)
    return nodes


class Resample(nn.Module):
    """effdet's ``ResampleFeatureMap``: 1x1 conv + BN where the channels differ, then max-pool
    (kernel stride + 1, timm's symmetric padding) to a smaller size or nearest to a larger one."""

    channels: int
    size: tuple
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.shape[-1] != self.channels:
            x = ConvBn(self.channels, self.dtype, name="conv")(x, train)
        (h, w), (oh, ow) = x.shape[1:3], self.size
        if h > oh and w > ow:
            sh, sw = (h - 1) // oh + 1, (w - 1) // ow + 1
            return max_pool2d(x, (sh + 1, sw + 1), (sh, sw), (sh - 1, sw - 1))
        if h < oh or w < ow:
            return interpolate(x, (oh, ow), "nearest")
        return x


class ConvBn(nn.Module):
    """effdet's ``ConvBnAct2d`` as resampling uses it: 1x1 conv (no bias) + BN, no activation."""

    channels: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv2d(self.channels, 1, dtype=self.dtype, kernel_init=glorot_uniform,
                   name="conv")(x)
        return BatchNorm(**BN, dtype=self.dtype, name="bn")(x, train)


class Combine(nn.Module):
    """effdet's ``FpnCombine``: the inputs resampled to ``size`` and summed with weights."""

    inputs: tuple
    channels: int
    size: tuple
    weight_method: str = "fastattn"
    dtype: Any = None

    @nn.compact
    def __call__(self, maps: Sequence[jax.Array], train: bool = False):
        nodes = [Resample(self.channels, self.size, self.dtype, name=f"resample_{i}")(
            maps[i], train) for i in self.inputs]
        if self.weight_method == "sum":
            return sum(nodes)
        w = param(self, "edge_weights", nn.initializers.ones, (len(nodes),))
        w = w.astype(nodes[0].dtype)
        if self.weight_method == "attn":
            w = jax.nn.softmax(w)
            return sum(n * w[i] for i, n in enumerate(nodes))
        w = nn.relu(w)
        total = jnp.sum(w) + 1e-4
        return sum((n * w[i]) / total for i, n in enumerate(nodes))


class AfterCombine(nn.Module):
    """SiLU, then separable 3x3 conv + BN (effdet's pre-activation ``after_combine``)."""

    channels: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        return SeparableConv2d(self.channels, 3, norm_kwargs=BN, dw_init=depthwise_glorot_uniform,
                               pw_init=glorot_uniform, dtype=self.dtype, name="conv")(
            nn.silu(x), train)


class FNode(nn.Module):
    inputs: tuple
    channels: int
    size: tuple
    weight_method: str = "fastattn"
    dtype: Any = None

    @nn.compact
    def __call__(self, maps, train: bool = False):
        x = Combine(self.inputs, self.channels, self.size, self.weight_method, self.dtype,
                    name="combine")(maps, train)
        return AfterCombine(self.channels, self.dtype, name="after_combine")(x, train)


class BiFpnLayer(nn.Module):
    channels: int
    weight_method: str = "fastattn"
    dtype: Any = None

    @nn.compact
    def __call__(self, maps: list, train: bool = False) -> list:
        num_levels, sizes = len(maps), [m.shape[1:3] for m in maps]
        maps = list(maps)
        for i, (level, inputs) in enumerate(bifpn_nodes(num_levels)):
            maps.append(FNode(inputs, self.channels, tuple(sizes[level]), self.weight_method,
                              self.dtype, name=f"fnode_{i}")(maps, train))
        return maps[-num_levels:]


class BiFPN(nn.Module):
    """``dict`` of NHWC maps -> ``dict`` of ``num_levels`` maps with ``channels`` channels, finest
    first: the inputs' names (ordered by size, key order breaking ties), then
    ``p{min_level + k}`` for the extra levels (P6, P7 on C3..C5)."""

    channels: int = 64
    num_repeats: int = 3
    num_levels: int = 5
    min_level: int = 3  # names the extra levels
    weight_method: str = "fastattn"
    dtype: Any = None

    @nn.compact
    def __call__(self, feats: dict, train: bool = False) -> dict:
        if self.weight_method not in WEIGHT_METHODS:
            raise ValueError(f"BiFPN: weight_method must be one of {WEIGHT_METHODS}, got "
                             f"{self.weight_method!r}")
        if not isinstance(feats, dict) or not 0 < len(feats) <= self.num_levels:
            raise ValueError(f"BiFPN expects a dict of 1..num_levels={self.num_levels} NHWC "
                             f"maps, highest resolution first, got "
                             f"{type(feats).__name__} of {len(feats) if isinstance(feats, dict) else '?'}")
        for n, m in feats.items():
            if m.ndim != 4:
                raise ValueError(f"BiFPN input {n!r}: expected NHWC, got shape {tuple(m.shape)}")
        # finest first by size, not by key order: a dict that crossed a jit boundary comes
        # back with sorted keys ("c16" < "c8")
        names = sorted(feats, key=lambda n: -feats[n].shape[1] * feats[n].shape[2])
        maps = [feats[n] for n in names]
        for level in range(len(maps), self.num_levels):
            h, w = maps[-1].shape[1:3]  # effdet's feature sizes: ceil-halving
            maps.append(Resample(self.channels, ((h - 1) // 2 + 1, (w - 1) // 2 + 1), self.dtype,
                                 name=f"resample_{level}")(maps[-1], train))
            names.append(f"p{self.min_level + level}")
        for r in range(self.num_repeats):
            maps = BiFpnLayer(self.channels, self.weight_method, self.dtype,
                              name=f"cell_{r}")(maps, train)
        return dict(zip(names, maps))
