"""``shapes``: a procedural dataset of coloured geometric shapes on varied backgrounds.

Example ``i`` is a pure function of ``(seed, i)``: nothing is downloaded or held in memory.
Each example carries a class label (the shape's kind), a per-pixel mask (0 background, class + 1
on the shape) and the shape's box (``boxes``, ``classes``, ``num_boxes``: the detection
contract), so classification, segmentation and detection can all train on it; ``masks=True``
adds the shape's instance mask (``masks`` (1, H, W) uint8) for instance segmentation.
"""
from __future__ import annotations

import numpy as np

from jaxvision.data.errors import DataError

KINDS = ("circle", "square", "triangle", "cross", "ring", "diamond")


def _shape_mask(kind: str, yy, xx, cy, cx, r):
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dy * dy + dx * dx <= r * r
    if kind == "square":
        return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    if kind == "triangle":  # apex up
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == "cross":
        arm = r * 0.3
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if kind == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    raise ValueError(kind)


class ShapesSource:
    """A grain random-access source: ``len()`` and ``[i]`` -> dict of numpy arrays."""

    def __init__(self, num_examples: int, num_classes: int = 4, image_size: int = 32,
                 seed: int = 0, box_class_offset: int = 0, masks: bool = False):
        if not 2 <= num_classes <= len(KINDS):
            raise DataError(f"data.shapes.num_classes must be in [2, {len(KINDS)}], "
                             f"got {num_classes}")
        if image_size < 16:
            raise DataError(f"data.shapes.image_size must be >= 16, got {image_size}")
        self.num_examples, self.num_classes = int(num_examples), int(num_classes)
        self.image_size, self.seed = int(image_size), int(seed)
        self.box_class_offset = int(box_class_offset)  # added to ``classes`` (not ``label``)
        self.masks = bool(masks)
        self.class_names = list(KINDS[:num_classes])

    def __repr__(self) -> str:
        # grain checks repr(source) when a loader's state is restored: it must not hold an id
        return (f"ShapesSource(num_examples={self.num_examples}, num_classes={self.num_classes}, "
                f"image_size={self.image_size}, seed={self.seed}"
                + (f", box_class_offset={self.box_class_offset}" if self.box_class_offset
                   else "") + (", masks=True)" if self.masks else ")"))

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index)])
        s = self.image_size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        # background: a random linear gradient between two colours plus noise
        c0, c1 = rng.uniform(0, 255, (2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        t = ((np.cos(angle) * xx + np.sin(angle) * yy) / s + 1) / 2
        image = c0 * (1 - t[..., None]) + c1 * t[..., None]
        image += rng.normal(0, 12, image.shape)
        label = int(rng.integers(self.num_classes))
        r = rng.uniform(0.25, 0.42) * s
        cy, cx = rng.uniform(r, s - r, 2)
        inside = _shape_mask(KINDS[label], yy, xx, cy, cx, r)
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - (c0 + c1) / 2).sum() < 150:  # keep the shape visible
            colour = rng.uniform(0, 255, 3)
        image[inside] = colour
        mask = np.where(inside, label + 1, 0).astype(np.int32)
        ys, xs = np.nonzero(inside)
        boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        ex = {"image": np.clip(image, 0, 255).astype(np.uint8), "label": np.int32(label),
              "mask": mask, "boxes": boxes,
              "classes": np.array([label + self.box_class_offset], np.int32),
              "num_boxes": np.int32(1)}
        if self.masks:
            ex["masks"] = inside[None].astype(np.uint8)
        return ex
