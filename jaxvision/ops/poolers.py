"""torchvision's ``MultiScaleRoIAlign``: each RoI pooled from the FPN level its size picks
(``LevelMapper``: the level of a 224x224 box is 4, one up per doubling), with RoIAlign.

The levels' scales and range come from static shapes, as torchvision's ``_setup_scales`` infers
them: scale = 2 ** round(log2(map height / image height)).  The level is data, not a loop: every
map is flattened into one (pixels, C) table and each RoI reads its own level's rows, so each
RoI is sampled once, as in torchvision, in one gather.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from jaxvision.ops.roi_align import _pair, default_max_sampling, sample_roi_grid


def infer_scale(map_size: Sequence[int], image_size: Sequence[int]) -> float:
    """torchvision's ``_infer_scale``: the power of two nearest map height / image height."""
    approx = float(map_size[0]) / float(image_size[0])
    return float(2 ** float(np.round(np.log2(np.float32(approx)))))


def level_of(boxes, k_min: int, k_max: int, canonical_scale: int = 224,
             canonical_level: int = 4, eps: float = 1e-6):
    """torchvision's ``LevelMapper``: floor(level0 + log2(sqrt(area) / scale0) + eps) clamped to
    [k_min, k_max], minus k_min."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    lvl = jnp.floor(canonical_level + jnp.log2(jnp.sqrt(area) / canonical_scale)
                    + jnp.float32(eps))
    return (jnp.clip(lvl, k_min, k_max) - k_min).astype(jnp.int32)


class MultiScaleRoIAlign:
    """``MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio)`` as torchvision's;
    ``pooler(features, boxes, image_size)`` with ``features`` a dict of NHWC maps (those in
    ``featmap_names``, in the dict's order), ``boxes`` (N, R, 4) xyxy padded per image,
    ``image_size`` the static (h, w) torchvision infers the scales from (the largest image's;
    the padded batch's gives the same powers of two).  Returns (N, R, oh, ow, C)."""

    def __init__(self, featmap_names: Sequence[str], output_size: Union[int, Sequence[int]],
                 sampling_ratio: int, *, canonical_scale: int = 224, canonical_level: int = 4,
                 max_sampling: Optional[Union[int, Sequence[int]]] = None):
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.max_sampling = max_sampling

    def __call__(self, features: dict, boxes, image_size: Sequence[int], valid=None):
        missing = [k for k in self.featmap_names if k not in features]
        if missing:
            raise ValueError(f"MultiScaleRoIAlign: features lack {missing}; it pools "
                             f"{self.featmap_names}, got keys {list(features)}")
        maps = [v for k, v in features.items() if k in self.featmap_names]
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != maps[0].shape[0]:
            raise ValueError(f"MultiScaleRoIAlign: boxes must be (N, R, 4) with N = "
                             f"{maps[0].shape[0]}, got shape {boxes.shape}")
        n, r = boxes.shape[:2]
        scales = [infer_scale(m.shape[1:3], image_size) for m in maps]
        k_min = int(-np.log2(np.float32(scales[0])))
        k_max = int(-np.log2(np.float32(scales[-1])))
        if len(maps) == 1:
            level = jnp.zeros((n * r,), jnp.int32)
        else:
            level = level_of(boxes.reshape(-1, 4), k_min, k_max, self.canonical_scale,
                             self.canonical_level)
        sizes = np.array([m.shape[1:3] for m in maps], np.int32)
        starts = np.cumsum([0] + [m.shape[0] * h * w for m, (h, w) in zip(maps, sizes)])[:-1]
        image = jnp.repeat(jnp.arange(n, dtype=jnp.int32), r)
        height, width = jnp.asarray(sizes[:, 0])[level], jnp.asarray(sizes[:, 1])[level]
        base = jnp.asarray(starts, jnp.int32)[level] + image * height * width
        table = jnp.concatenate([m.reshape(-1, m.shape[-1]) for m in maps])
        bound = (tuple(np.max([default_max_sampling(s, self.output_size) for s in sizes], 0))
                 if self.max_sampling is None else _pair(self.max_sampling))
        out = sample_roi_grid(table, base, height, width, boxes.reshape(-1, 4),
                              jnp.asarray(scales, table.dtype)[level], self.output_size,
                              self.sampling_ratio, False, bound)
        out = out.reshape(n, r, *self.output_size, table.shape[-1])
        if valid is not None:
            out = jnp.where(valid[:, :, None, None, None], out, 0.0)
        return out
