"""PASCAL VOC-style segmentation folders::

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png          palette PNGs: the palette index is the class id
    root/ImageSets/Segmentation/<split>.txt  one <id> per line

as torchvision.datasets.VOCSegmentation reads them (255 marks object borders: ignored).

With ``root/SegmentationObject/<id>.png`` (palette index = instance number, 255 = border) the
same folders are an instance layout: ``VocInstanceSource`` gives each object's box, class (the
class mask under it) and, with ``masks``, its mask, for detection / instance segmentation.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxvision.data.errors import DataError, require_root
from jaxvision.data.transforms import IGNORE, check_mask, to_rgb

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor")


class VocSource:
    def __init__(self, root: str, split: str, num_classes: int):
        self.root, self.split, self.num_classes = root, split, int(num_classes)
        listing = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(listing):
            raise DataError(f"{listing}: no such split list (expected root/ImageSets/"
                            f"Segmentation/<split>.txt; data.voc.root={root!r})")
        with open(listing) as f:
            self.ids = [line.strip() for line in f if line.strip()]
        if not self.ids:
            raise DataError(f"{listing}: lists no images")
        # every listed file up front: a missing one fails now, not hours into training
        for i in self.ids:
            for path in self.paths(i):
                if not os.path.isfile(path):
                    raise DataError(f"{listing}: lists {i!r}, but {path} does not exist")

    def paths(self, i: str):
        return (os.path.join(self.root, "JPEGImages", f"{i}.jpg"),
                os.path.join(self.root, "SegmentationClass", f"{i}.png"))

    def _read(self, path, what):
        try:
            with Image.open(path) as img:
                if what == "image":
                    return np.asarray(to_rgb(img))
                if img.mode not in ("P", "L"):
                    raise DataError(f"{path}: mask mode {img.mode!r}, expected a palette "
                                    "('P') or 8-bit grey ('L') PNG of class or object ids")
                return np.asarray(img)  # a palette image's array is its indices: the ids
        except (OSError, ValueError, SyntaxError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: cannot be read as {'an' if what == 'image' else 'a'} "
                            f"{what} ({e})") from e

    def __repr__(self):  # grain compares repr(source) when restoring a loader's state
        return f"VocSource(root={self.root!r}, split={self.split!r}, n={len(self.ids)})"

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_path, mask_path = self.paths(self.ids[index])
        image, mask = self._read(image_path, "image"), self._read(mask_path, "mask")
        return {"image": image, "mask": check_mask(image, mask, self.num_classes, mask_path)}


class VocInstanceSource(VocSource):
    """``[i]`` -> ``{"image", "boxes" (n, 4) xyxy, "classes" (n,), "num_boxes"}`` and with
    ``masks`` ``"masks"`` (n, H, W) uint8: one row per object of ``SegmentationObject/``, in
    instance-number order, its box the extent of its pixels."""

    def __init__(self, root: str, split: str, num_classes: int, masks: bool = False):
        self.masks = bool(masks)
        super().__init__(root, split, num_classes)

    def paths(self, i: str):
        return super().paths(i) + (os.path.join(self.root, "SegmentationObject", f"{i}.png"),)

    def __repr__(self):
        return f"VocInstanceSource(root={self.root!r}, split={self.split!r}, " \
               f"masks={self.masks}, n={len(self.ids)})"

    def __getitem__(self, index):
        image_path, class_path, object_path = self.paths(self.ids[index])
        image = self._read(image_path, "image")
        classes = check_mask(image, self._read(class_path, "mask"), self.num_classes, class_path)
        objects = check_mask(image, self._read(object_path, "mask"), 256, object_path)
        ids = [k for k in np.unique(objects) if k not in (0, IGNORE)]
        masks = np.stack([objects == k for k in ids]).astype(np.uint8) if ids else \
            np.zeros((0, *objects.shape), np.uint8)
        labels, boxes = [], []
        for k, m in zip(ids, masks.astype(bool)):
            under = np.unique(classes[m])
            if len(under) != 1 or under[0] in (0, IGNORE):
                raise DataError(f"{object_path}: object {k} lies on class ids "
                                f"{under.tolist()} of {class_path}; expected one class of "
                                f"1..{self.num_classes - 1}")
            ys, xs = np.nonzero(m)
            labels.append(int(under[0]))
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        ex = {"image": image, "boxes": np.array(boxes, np.float32).reshape(-1, 4),
              "classes": np.array(labels, np.int32), "num_boxes": np.int32(len(ids))}
        if self.masks:
            ex["masks"] = masks
        return ex


def voc_sources(cfg, instances: bool = False, masks: bool = False):
    """(train, val, class_names) of ``data.voc``: class masks, or with ``instances`` the
    objects of ``SegmentationObject/`` (with ``masks`` their masks)."""
    require_root(cfg.root, "data.voc.root",
                 "a folder holding JPEGImages/, SegmentationClass/, ImageSets/Segmentation/")
    n = int(cfg.num_classes)
    names = list(CLASSES) if n == len(CLASSES) else [f"class_{i}" for i in range(n)]
    if instances:
        return (VocInstanceSource(cfg.root, cfg.train_split, n, masks),
                VocInstanceSource(cfg.root, cfg.val_split, n, masks), names)
    return (VocSource(cfg.root, cfg.train_split, n), VocSource(cfg.root, cfg.val_split, n),
            names)
