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

from jaxvision.data.box_ops import crop_boxes, hflip_boxes
from jaxvision.data.errors import DataError
from jaxvision.data.instance_ops import (COCO_KEYPOINT_FLIP, crop_keypoints, hflip_keypoints,
                                         resize_masks)
from jaxvision.data.transforms import _RESAMPLE, to_rgb
from jaxvision.ops.resize import resize_boxes, resize_keypoints, resized_size


def _targets(example, hw, prefix="", count="num_boxes"):
    """The real rows of an example's boxes, classes and, where the source gives them, its
    instance ``masks`` (n, H, W) and ``keypoints`` (n, K, 3)."""
    n = int(example[count])
    t = {"boxes": np.asarray(example[prefix + "boxes"], np.float32).reshape(-1, 4)[:n],
         "classes": np.asarray(example[prefix + "classes"], np.int32).reshape(-1)[:n]}
    if prefix + "masks" in example:
        masks = np.asarray(example[prefix + "masks"], np.uint8)[:n]
        if masks.shape != (n, *hw):  # a mask on other pixels than its image's
            raise DataError(f"{prefix}masks of shape {masks.shape}, expected ({n}, {hw[0]}, "
                            f"{hw[1]}): one per box, of the image's size")
        t["masks"] = masks
    if "keypoints" in example and not prefix:  # crowd regions carry no keypoints
        t["keypoints"] = np.asarray(example["keypoints"], np.float32)[:n]
    return t


def _crowd(example, hw):
    """The example's crowd regions (COCO's ignore regions) where the source keeps them."""
    return _targets(example, hw, "crowd_", "num_crowd") if "num_crowd" in example else None


def _resize_targets(t, src_hw, dst_hw):
    if t is None:
        return None
    out = dict(t, boxes=resize_boxes(t["boxes"], src_hw, dst_hw))
    if "masks" in t:
        out["masks"] = resize_masks(t["masks"], dst_hw)
    if "keypoints" in t:
        out["keypoints"] = resize_keypoints(t["keypoints"], src_hw, dst_hw)
    return out


def _pad(rows, max_rows, shape, dtype):
    out = np.zeros((max_rows, *shape), dtype)
    n = min(len(rows), max_rows)
    out[:n] = np.asarray(rows)[:n].reshape(n, *shape)
    return out


def pack(image, boxes, classes, canvas: int, max_boxes: int, scale, masks=None,
         keypoints=None, crowd=None, max_crowd: int = 0):
    """uint8 image padded to ``canvas`` and boxes padded to ``max_boxes`` (the first
    ``max_boxes`` are kept: an image holding more is truncated); ``masks`` pad alike to
    (max_boxes, canvas, canvas) and ``keypoints`` to (max_boxes, K, 3), and ``crowd`` regions
    (a targets dict) to ``max_crowd`` rows as ``crowd_boxes``, ``crowd_classes``,
    ``num_crowd`` (and ``crowd_masks``)."""
    h, w = image.shape[:2]
    out = np.zeros((canvas, canvas, 3), np.uint8)
    out[:h, :w] = image
    n = min(len(boxes), max_boxes)
    batch = {"image": out, "boxes": _pad(boxes, max_boxes, (4,), np.float32),
             "classes": _pad(classes, max_boxes, (), np.int32), "num_boxes": np.int32(n),
             "image_size": np.array([h, w], np.int32), "scale": np.asarray(scale, np.float32)}
    if masks is not None:
        batch["masks"] = _pad_masks(masks, max_boxes, canvas)
    if keypoints is not None:
        batch["keypoints"] = _pad(keypoints, max_boxes, np.shape(keypoints)[1:], np.float32)
    if crowd is not None:
        batch |= {"crowd_boxes": _pad(crowd["boxes"], max_crowd, (4,), np.float32),
                  "crowd_classes": _pad(crowd["classes"], max_crowd, (), np.int32),
                  "num_crowd": np.int32(min(len(crowd["boxes"]), max_crowd))}
        if "masks" in crowd:
            batch["crowd_masks"] = _pad_masks(crowd["masks"], max_crowd, canvas)
    return batch


def _pad_masks(masks, rows, canvas):
    out = np.zeros((rows, canvas, canvas), np.uint8)
    n = min(len(masks), rows)
    out[:n, :masks.shape[1], :masks.shape[2]] = masks[:n]
    return out


def _pack(image, t, canvas, max_boxes, scale, crowd=None, max_crowd=0):
    return pack(image, t["boxes"], t["classes"], canvas, max_boxes, scale, t.get("masks"),
                t.get("keypoints"), crowd, max_crowd)


def _resize(img: Image.Image, t, min_size, max_size, interpolation, crowd=None):
    h, w = img.height, img.width
    nh, nw = resized_size(h, w, min_size, max_size)
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), _RESAMPLE[interpolation])
    return (img, _resize_targets(t, (h, w), (nh, nw)), (nh / h, nw / w),
            _resize_targets(crowd, (h, w), (nh, nw)))


class DetTrainTransform(grain.transforms.RandomMap):
    """Shorter side to a random size in ``scale_range`` x ``min_size`` (longer side capped at
    ``max_size`` scaled alike), horizontal flip, a random ``canvas`` crop when the image
    outgrows it (boxes clipped; those left thinner than ``min_box`` px dropped), pad.

    Instance ``masks`` and ``keypoints``, where the example has them, move with the image
    (``keypoint_flip``: which keypoint each becomes in the mirror image). Crowd regions are
    not targets: a train batch leaves them out, as torchvision's reference does."""

    def __init__(self, min_size, max_size, canvas, scale_range=(1.0, 1.0), hflip=True,
                 max_boxes=100, min_box=1.0, interpolation="bilinear",
                 keypoint_flip=COCO_KEYPOINT_FLIP):
        self.min_size, self.max_size, self.canvas = int(min_size), int(max_size), int(canvas)
        self.scale_range, self.hflip = scale_range, hflip
        self.max_boxes, self.min_box, self.interpolation = max_boxes, min_box, interpolation
        self.keypoint_flip = tuple(keypoint_flip)

    def random_map(self, example, rng: np.random.Generator):
        img = to_rgb(example["image"])
        t = _targets(example, (img.height, img.width))
        lo, hi = (int(round(f * self.min_size)) for f in self.scale_range)
        size = int(rng.integers(lo, hi + 1))
        img, t, _, _ = _resize(img, t, size, self.max_size * size / self.min_size,
                               self.interpolation)
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            t["boxes"] = hflip_boxes(t["boxes"], img.width)
            if "masks" in t:
                t["masks"] = t["masks"][:, :, ::-1]
            if "keypoints" in t:
                t["keypoints"] = hflip_keypoints(t["keypoints"], img.width, self.keypoint_flip)
        image = np.asarray(img)
        h, w = image.shape[:2]
        if h > self.canvas or w > self.canvas:
            ch, cw = min(h, self.canvas), min(w, self.canvas)
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            image = image[top:top + ch, left:left + cw]
            t["boxes"], t["classes"], keep = crop_boxes(t["boxes"], t["classes"], top, left,
                                                        ch, cw, self.min_box)
            if "masks" in t:
                t["masks"] = t["masks"][keep, top:top + ch, left:left + cw]
            if "keypoints" in t:
                t["keypoints"] = crop_keypoints(t["keypoints"][keep], top, left, ch, cw)
        return _pack(image, t, self.canvas, self.max_boxes, (1.0, 1.0))


class DetEvalTransform(grain.transforms.Map):
    """torchvision's eval resize (shorter side ``min_size``, longer at most ``max_size``), pad
    to ``canvas``; ``scale`` maps the boxes back to the original image. Never truncates: an
    image with more than ``max_boxes`` boxes (or ``max_crowd`` crowd regions, where the source
    keeps them) is refused (the detection task's eval transform pads to the split's largest
    counts where the source knows them). Masks, keypoints and crowd regions move with the
    image."""

    def __init__(self, min_size, max_size, canvas, max_boxes=100, interpolation="bilinear",
                 max_crowd=1):
        self.min_size, self.max_size, self.canvas = int(min_size), int(max_size), int(canvas)
        self.max_boxes, self.max_crowd = max_boxes, int(max_crowd)
        self.interpolation = interpolation

    def map(self, example):
        img = to_rgb(example["image"])
        hw = (img.height, img.width)
        t, crowd = _targets(example, hw), _crowd(example, hw)
        if len(t["boxes"]) > self.max_boxes:  # the AP would be scored against part of the truth
            raise DataError(f"an eval image holds {len(t['boxes'])} boxes, more than the "
                            f"{self.max_boxes} of data.detection.max_boxes: evaluation must see "
                            "every box; raise data.detection.max_boxes")
        if crowd is not None and len(crowd["boxes"]) > self.max_crowd:
            raise DataError(f"an eval image holds {len(crowd['boxes'])} crowd regions, more "
                            f"than max_crowd={self.max_crowd}: evaluation must see every one")
        img, t, scale, crowd = _resize(img, t, self.min_size, self.max_size,
                                       self.interpolation, crowd)
        if max(img.height, img.width) > self.canvas:
            raise ValueError(f"eval image resized to {img.height}x{img.width} outgrows the "
                             f"{self.canvas} px canvas (data.detection.canvas)")
        return _pack(np.asarray(img), t, self.canvas, self.max_boxes, scale, crowd,
                     self.max_crowd)
