"""Spatial pyramid pooling as YOLOv4 uses it (after He et al. 2014's SPP-net): max-pools of
sizes 5, 9 and 13 at stride 1 with 'same' padding, concatenated with the input, largest pool
first (YOLOv4's ``route -1,-3,-5,-6``).  No parameters; the map keeps its size and gains
``len(pool_sizes)`` times its channels."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.pool import max_pool2d
from jaxvision.necks.base import single_map


class SPP(nn.Module):
    """``x``: an NHWC map, or a dict of maps (SPP then pools the last one, the coarsest)."""

    pool_sizes: Sequence[int] = (5, 9, 13)

    def __call__(self, x, train: bool = False):
        return single_map("SPP", x, self._spp)

    def _spp(self, x):
        if any(k % 2 == 0 for k in self.pool_sizes):
            raise ValueError(f"SPP pool sizes must be odd ('same' padding), got {self.pool_sizes}")
        # max_pool2d pads with -inf, so the border max is over real pixels only (darknet's rule)
        pools = [max_pool2d(x, k, 1, k // 2) for k in sorted(self.pool_sizes, reverse=True)]
        return jnp.concatenate(pools + [x], axis=-1)
