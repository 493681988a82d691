"""Joint image + box transforms for detection, with static output shapes.

torchvision's detectors resize inside the model (``GeneralizedRCNNTransform``: shorter side to
``min_size``, longer side at most ``max_size``) and pad each batch to its own largest image; a
jitted step needs one shape, so here every image is resized the same way and padded at the
bottom/right to a fixed ``canvas`` square (uint8 zeros here; the device normalises and zeroes
what lies outside ``image_size``, so the padding is 0 after normalising as torchvision's), and
the boxes are padded to ``max_boxes`` rows with a count. ``image_size`` carries the resized
image's (h, w) so the detector clips its boxes there, and ``scale`` the (y, x) factors from the
original image, so evaluation can report boxes in the original pixels.
"""
from __future__ import annotations

import grain
import numpy as np
from PIL import Image

from jaxvision.data.box_ops import crop_boxes, hflip_boxes, resize_boxes
from jaxvision.data.errors import DataError
from jaxvision.data.transforms import _RESAMPLE, to_rgb
from jaxvision.ops.resize import resized_size


def _boxes(example):
    n = int(example["num_boxes"])
    boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)[:n]
    return boxes, np.asarray(example["classes"], np.int32).reshape(-1)[:n]


def pack(image, boxes, classes, canvas: int, max_boxes: int, scale):
    """uint8 image padded to ``canvas`` and boxes padded to ``max_boxes`` (the first
    ``max_boxes`` are kept: an image holding more is truncated)."""
    h, w = image.shape[:2]
    out = np.zeros((canvas, canvas, 3), np.uint8)
    out[:h, :w] = image
    n = min(len(boxes), max_boxes)
    padded = np.zeros((max_boxes, 4), np.float32)
    padded[:n] = boxes[:n]
    cls = np.zeros((max_boxes,), np.int32)
    cls[:n] = classes[:n]
    return {"image": out, "boxes": padded, "classes": cls, "num_boxes": np.int32(n),
            "image_size": np.array([h, w], np.int32), "scale": np.asarray(scale, np.float32)}


def _resize(img: Image.Image, boxes, min_size, max_size, interpolation):
    h, w = img.height, img.width
    nh, nw = resized_size(h, w, min_size, max_size)
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), _RESAMPLE[interpolation])
    return img, resize_boxes(boxes, (h, w), (nh, nw)), (nh / h, nw / w)


class DetTrainTransform(grain.transforms.RandomMap):
    """Shorter side to a random size in ``scale_range`` x ``min_size`` (longer side capped at
    ``max_size`` scaled alike), horizontal flip, a random ``canvas`` crop when the image
    outgrows it (boxes clipped; those left thinner than ``min_box`` px dropped), pad."""

    def __init__(self, min_size, max_size, canvas, scale_range=(1.0, 1.0), hflip=True,
                 max_boxes=100, min_box=1.0, interpolation="bilinear"):
        self.min_size, self.max_size, self.canvas = int(min_size), int(max_size), int(canvas)
        self.scale_range, self.hflip = scale_range, hflip
        self.max_boxes, self.min_box, self.interpolation = max_boxes, min_box, interpolation

    def random_map(self, example, rng: np.random.Generator):
        img = to_rgb(example["image"])
        boxes, classes = _boxes(example)
        lo, hi = (int(round(f * self.min_size)) for f in self.scale_range)
        size = int(rng.integers(lo, hi + 1))
        img, boxes, _ = _resize(img, boxes, size, self.max_size * size / self.min_size,
                                self.interpolation)
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = hflip_boxes(boxes, img.width)
        image = np.asarray(img)
        h, w = image.shape[:2]
        if h > self.canvas or w > self.canvas:
            ch, cw = min(h, self.canvas), min(w, self.canvas)
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            image = image[top:top + ch, left:left + cw]
            boxes, classes, _ = crop_boxes(boxes, classes, top, left, ch, cw, self.min_box)
        return pack(image, boxes, classes, self.canvas, self.max_boxes, (1.0, 1.0))


class DetEvalTransform(grain.transforms.Map):
    """torchvision's eval resize (shorter side ``min_size``, longer at most ``max_size``), pad
    to ``canvas``; ``scale`` maps the boxes back to the original image. Never truncates: an
    image with more than ``max_boxes`` boxes is refused (``Data.eval_transform`` pads to the
    split's largest count where the source knows it)."""

    def __init__(self, min_size, max_size, canvas, max_boxes=100, interpolation="bilinear"):
        self.min_size, self.max_size, self.canvas = int(min_size), int(max_size), int(canvas)
        self.max_boxes = max_boxes
        self.interpolation = interpolation

    def map(self, example):
        img = to_rgb(example["image"])
        boxes, classes = _boxes(example)
        if len(boxes) > self.max_boxes:  # the AP would be scored against part of the truth
            raise DataError(f"an eval image holds {len(boxes)} boxes, more than the "
                            f"{self.max_boxes} of data.detection.max_boxes: evaluation must see "
                            "every box; raise data.detection.max_boxes")
        img, boxes, scale = _resize(img, boxes, self.min_size, self.max_size, self.interpolation)
        if max(img.height, img.width) > self.canvas:
            raise ValueError(f"eval image resized to {img.height}x{img.width} outgrows the "
                             f"{self.canvas} px canvas (data.detection.canvas)")
        return pack(np.asarray(img), boxes, classes, self.canvas, self.max_boxes, scale)
