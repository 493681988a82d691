"""torchvision's RandomErasing, split where its recipe splits it.

The reference recipes erase *after* normalising (``presets.py``: ... Normalize, RandomErasing),
so value 0 paints the mean colour and "random" paints standard normal noise in normalised
units. Images leave the workers as uint8 and are normalised on the device, so the worker draws
the box here (torchvision's ``get_params``) and ships it with the example as ``erase``
(top, left, height, width; an empty box when nothing is erased); the classification step
paints it after normalising (``jaxvision.tasks.batch_mix.erase``).
"""
from __future__ import annotations

import math

import numpy as np

NO_BOX = np.zeros(4, np.int32)


class RandomErasing:
    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"random erasing probability must be in [0, 1], got {p}")
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"random erasing scale {scale} and ratio {ratio} must be "
                             "(min, max) ranges")
        self.p, self.scale, self.ratio = p, tuple(scale), tuple(ratio)

    def box(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """int32 (top, left, h, w) of torchvision's ``RandomErasing``: erase with probability
        ``p``; 10 tries at an area fraction in ``scale`` and a log-uniform aspect in ``ratio``,
        a box strictly smaller than the image; none (all zeros) when every try fails."""
        if not rng.random() < self.p:
            return NO_BOX
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            erase_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            h = int(round(math.sqrt(erase_area * aspect)))
            w = int(round(math.sqrt(erase_area / aspect)))
            if h < height and w < width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return np.array([top, left, h, w], np.int32)
        return NO_BOX
