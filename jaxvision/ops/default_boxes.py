"""SSD's default boxes (torchvision's ``DefaultBoxGenerator``), as numpy constants.

Like the anchors, they depend only on static shapes; the float32 arithmetic follows
torchvision's so the boxes are bitwise equal: centres ``(i + 0.5) / (image / step)``, widths and
heights from the scales (clipped to [0, 1]), then corners ``(c -/+ wh / 2) * image size``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


class DefaultBoxGenerator:
    def __init__(self, aspect_ratios: Sequence[Sequence[int]], min_ratio: float = 0.15,
                 max_ratio: float = 0.9, scales: Optional[Sequence[float]] = None,
                 steps: Optional[Sequence[int]] = None, clip: bool = True):
        if steps is not None and len(aspect_ratios) != len(steps):
            raise ValueError(f"DefaultBoxGenerator: {len(aspect_ratios)} levels of aspect_ratios "
                             f"but {len(steps)} steps")
        self.aspect_ratios = [list(a) for a in aspect_ratios]
        self.steps, self.clip = steps, clip
        n = len(aspect_ratios)
        if scales is None:
            scales = ([min_ratio + (max_ratio - min_ratio) * k / (n - 1.0) for k in range(n)]
                      + [1.0]) if n > 1 else [min_ratio, max_ratio]
        self.scales = list(scales)
        self.wh_pairs = [self._wh(k) for k in range(n)]

    def _wh(self, k: int) -> np.ndarray:
        s, s_next = self.scales[k], self.scales[k + 1]
        pairs = [[s, s], [math.sqrt(s * s_next)] * 2]
        for ar in self.aspect_ratios[k]:
            r = math.sqrt(ar)
            pairs += [[s * r, s / r], [s / r, s * r]]
        return np.asarray(pairs, np.float32)

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def __call__(self, image_size: Sequence[int], grid_sizes: Sequence[Sequence[int]]):
        """Default boxes per level, each (H_l * W_l * A_l, 4) xyxy float32 in pixels of the
        (batched) ``image_size`` = (height, width)."""
        if len(grid_sizes) != len(self.wh_pairs):
            raise ValueError(f"DefaultBoxGenerator: {len(grid_sizes)} feature maps but boxes are "
                             f"configured for {len(self.wh_pairs)} levels")
        size = np.array([image_size[1], image_size[0]], np.float32)
        out = []
        for k, (gh, gw) in enumerate(grid_sizes):
            if self.steps is not None:
                fx, fy = image_size[1] / self.steps[k], image_size[0] / self.steps[k]
            else:
                fy, fx = gh, gw
            xs = (np.arange(gw, dtype=np.float32) + np.float32(0.5)) / np.float32(fx)
            ys = (np.arange(gh, dtype=np.float32) + np.float32(0.5)) / np.float32(fy)
            sy, sx = np.meshgrid(ys, xs, indexing="ij")
            wh = np.clip(self.wh_pairs[k], 0, 1) if self.clip else self.wh_pairs[k]
            a = len(wh)
            centres = np.repeat(np.stack([sx.reshape(-1), sy.reshape(-1)], -1), a, axis=0)
            wh = np.tile(wh, (gh * gw, 1))
            half = np.float32(0.5) * wh
            out.append(np.concatenate([(centres - half) * size, (centres + half) * size], -1))
        return out
