"""PASCAL VOC-style segmentation folders::

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png          palette PNGs: the palette index is the class id
    root/ImageSets/Segmentation/<split>.txt  one <id> per line

as torchvision.datasets.VOCSegmentation reads them (255 marks object borders: ignored).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxvision.data.errors import DataError, require_root
from jaxvision.data.transforms import check_mask, to_rgb

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

    def __repr__(self):  # grain compares repr(source) when restoring a loader's state
        return f"VocSource(root={self.root!r}, split={self.split!r}, n={len(self.ids)})"

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_path, mask_path = self.paths(self.ids[index])
        try:
            with Image.open(image_path) as img:
                image = np.asarray(to_rgb(img))
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{image_path}: cannot be read as an image ({e})") from e
        try:
            with Image.open(mask_path) as m:
                if m.mode not in ("P", "L"):
                    raise DataError(f"{mask_path}: mask mode {m.mode!r}, expected a palette "
                                    "('P') or 8-bit grey ('L') PNG of class ids")
                mask = np.asarray(m)  # a palette image's array is its indices: the class ids
        except (OSError, ValueError, SyntaxError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{mask_path}: cannot be read as a mask ({e})") from e
        return {"image": image, "mask": check_mask(image, mask, self.num_classes, mask_path)}


def voc_sources(cfg):
    require_root(cfg.root, "data.voc.root",
                 "a folder holding JPEGImages/, SegmentationClass/, ImageSets/Segmentation/")
    n = int(cfg.num_classes)
    names = list(CLASSES) if n == len(CLASSES) else [f"class_{i}" for i in range(n)]
    return (VocSource(cfg.root, cfg.train_split, n), VocSource(cfg.root, cfg.val_split, n),
            names)
