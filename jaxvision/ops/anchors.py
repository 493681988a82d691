"""torchvision's ``AnchorGenerator``, computed at trace time.

Anchors depend only on static shapes (the padded batch size and each feature map's size), so
they are numpy constants: no device work per step.  The float32 arithmetic mirrors torchvision's
(sqrt of the aspect ratio, ``round`` half-to-even of the half sizes, integer shifts of
``stride = image_size // feature_size`` added in float32), so the anchors are bitwise equal.
Aspect ratio is height / width; anchors sit at the cell's top-left corner, as torchvision's.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class AnchorGenerator:
    def __init__(self, sizes: Sequence = ((128, 256, 512),),
                 aspect_ratios: Sequence = ((0.5, 1.0, 2.0),)):
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"AnchorGenerator: {len(sizes)} levels of sizes but "
                             f"{len(aspect_ratios)} of aspect_ratios")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(a) for a in aspect_ratios)
        self.cell_anchors = [self._cell(s, a) for s, a in zip(self.sizes, self.aspect_ratios)]

    @staticmethod
    def _cell(scales, aspect_ratios) -> np.ndarray:
        scales = np.asarray(scales, np.float32)
        ar = np.asarray(aspect_ratios, np.float32)
        h_ratios = np.sqrt(ar)
        w_ratios = np.float32(1) / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2))

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def __call__(self, image_size: Sequence[int], grid_sizes: Sequence[Sequence[int]]):
        """Anchors per level, each (H_l * W_l * A_l, 4) float32, row-major over (y, x, anchor).

        ``image_size`` is the padded batch's (height, width); ``grid_sizes`` each level's
        (height, width).
        """
        if len(grid_sizes) != len(self.cell_anchors):
            raise ValueError(f"AnchorGenerator: {len(grid_sizes)} feature maps but anchors are "
                             f"configured for {len(self.cell_anchors)} levels")
        out = []
        for (gh, gw), base in zip(grid_sizes, self.cell_anchors):
            sh, sw = image_size[0] // gh, image_size[1] // gw
            sy, sx = np.meshgrid(np.arange(gh) * sh, np.arange(gw) * sw, indexing="ij")
            shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4).astype(np.float32)
            out.append((shifts + base[None]).reshape(-1, 4).astype(np.float32))
        return out
