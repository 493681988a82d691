"""ViTDet's simple feature pyramid (Li et al. 2022, detectron2's ``SimpleFeaturePyramid``):
a pyramid built from one map, for backbones that have no pyramid (ViT: one map at stride 16).

From the last input map, per ``scale_factors`` entry: 4 -> two 2x2/2 transposed convs (the
first to half the width, then LayerNorm + GELU, the second to a quarter), 2 -> one (half the
width), 1 -> identity, 0.5 -> 2x2/2 max-pool; each then a 1x1 conv and a 3x3 conv to
``out_channels``, both without bias and each followed by a channel LayerNorm (eps 1e-6), as
ViTDet (``norm=None``: with bias, no norm).  Children are named ``simfp_{level}_{j}`` after
detectron2's ``simfp_{level}.{j}`` (level = log2 of the output stride).  Extra blocks as
:class:`jaxvision.necks.FPN`'s: ``"p6p7"`` (RetinaNet's, from the last level) or ``"pool"``
(ViTDet's P6 for Mask R-CNN).  Output: ``{"p3": ..., "p4": ..., "p5": ..., ["p6", "p7"]}``,
finest first, strides ``in_stride / factor``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn

from jaxvision.layers.conv import Conv2d
from jaxvision.layers.pool import max_pool2d
from jaxvision.necks.fpn import EXTRA_BLOCKS, LastLevelP6P7, fpn_kernel_init

SCALES = (4.0, 2.0, 1.0, 0.5)


class SimplePyramid(nn.Module):
    """``x``: a dict of maps (the last, coarsest, is read) or one NHWC map at ``in_stride``."""

    out_channels: int = 256
    scale_factors: Sequence[float] = (2.0, 1.0, 0.5)  # ViTDet's Mask R-CNN: (4, 2, 1, 0.5)
    in_stride: int = 16
    extra_blocks: Optional[str] = "p6p7"
    norm: Optional[str] = "layer"  # "layer" (ViTDet) or None
    dtype: Any = None

    def strides(self) -> tuple:
        """The output maps' strides, extra blocks included."""
        s = [int(self.in_stride / f) for f in self.scale_factors]
        return tuple(s + {None: [], "pool": [2 * s[-1]], "p6p7": [2 * s[-1], 4 * s[-1]]}[
            self.extra_blocks])

    def _norm(self, x, name):
        if self.norm is None:
            return x
        return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)(x)

    def _check(self):
        bad = [f for f in self.scale_factors if f not in SCALES]
        if bad or list(self.scale_factors) != sorted(self.scale_factors, reverse=True):
            raise ValueError(f"SimplePyramid: scale_factors must be decreasing values of "
                             f"{SCALES}, got {tuple(self.scale_factors)}")
        if self.extra_blocks not in EXTRA_BLOCKS:
            raise ValueError(f"SimplePyramid: extra_blocks must be one of {EXTRA_BLOCKS}, got "
                             f"{self.extra_blocks!r}")
        if self.norm not in ("layer", None):
            raise ValueError(f"SimplePyramid: norm must be 'layer' or None, got {self.norm!r}")
        if any(self.in_stride / f != int(self.in_stride / f) for f in self.scale_factors):
            raise ValueError(f"SimplePyramid: in_stride {self.in_stride} / scale_factors "
                             f"{tuple(self.scale_factors)} must be whole strides")

    @nn.compact
    def __call__(self, x, train: bool = False) -> dict:
        self._check()
        if isinstance(x, dict):
            x = list(x.values())[-1]
        if x.ndim != 4:
            raise ValueError(f"SimplePyramid expected NHWC input, got shape {tuple(x.shape)}")
        dim, out = x.shape[-1], {}
        for factor, stride in zip(self.scale_factors, self.strides()):
            level = int(math.log2(stride))
            name = lambda j: f"simfp_{level}_{j}"
            up = lambda y, c, j: nn.ConvTranspose(c, (2, 2), (2, 2), "VALID", dtype=self.dtype,
                                                  name=name(j))(y)
            if factor == 4.0:
                y = nn.gelu(self._norm(up(x, dim // 2, 0), name(1)), approximate=False)
                y, j = up(y, dim // 4, 3), 4
            elif factor == 2.0:
                y, j = up(x, dim // 2, 0), 1
            elif factor == 1.0:
                y, j = x, 0
            else:
                y, j = max_pool2d(x, 2, 2), 1
            for i, k in enumerate((1, 3)):
                y = Conv2d(self.out_channels, k, 1, k // 2, bias=self.norm is None,
                           dtype=self.dtype, kernel_init=fpn_kernel_init, name=name(j + i))(y)
                y = self._norm(y, f"{name(j + i)}_norm")
            out[f"p{level}"] = y
        last = list(out.values())[-1]
        if self.extra_blocks == "pool":
            out[f"p{level + 1}"] = max_pool2d(last, 1, 2, 0)
        elif self.extra_blocks == "p6p7":
            p6, p7 = LastLevelP6P7(self.out_channels, self.dtype, name="extra_blocks")(last)
            out[f"p{level + 1}"], out[f"p{level + 2}"] = p6, p7
        return out
