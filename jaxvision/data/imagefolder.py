"""torchvision's ImageFolder layout: ``root/<split>/<class>/<image>``, class = folder name."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxvision.data.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _scan(directory: str, classes=None):
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such image-folder directory "
                        "(expected root/<split>/<class>/<image>)")
    found = sorted(d.name for d in os.scandir(directory) if d.is_dir())
    if not found:
        raise DataError(f"{directory}: holds no class folders")
    classes = classes or found
    unknown = set(found) - set(classes)
    if unknown:
        raise DataError(f"{directory}: class folders {sorted(unknown)} are not in the train split")
    items = []
    for i, name in enumerate(classes):
        sub = os.path.join(directory, name)
        if os.path.isdir(sub):
            items += [(os.path.join(sub, f), i) for f in sorted(os.listdir(sub))
                      if f.lower().endswith(EXTENSIONS)]
    if not items:
        raise DataError(f"{directory}: no images with extensions {EXTENSIONS}")
    return items, classes


class FolderSource:
    def __init__(self, items, skip_corrupt: bool):
        self.items, self.skip_corrupt = items, skip_corrupt

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert("RGB"))
        except OSError as e:
            if not self.skip_corrupt:
                raise DataError(f"{path}: cannot be read as an image ({e}); set "
                                "data.imagefolder.skip_corrupt=True to replace it") from e
            # a grain source must return something for every index: the neighbour stands in
            return self[(index + 1) % len(self)]
        return {"image": image, "label": np.int32(label)}


def imagefolder_sources(cfg):
    if not cfg.root:
        raise DataError("data.imagefolder.root is empty: give --config.data.imagefolder.root=DIR")
    train_items, classes = _scan(os.path.join(cfg.root, cfg.train_dir))
    if cfg.val_fraction:
        rng = np.random.default_rng(0)
        order = rng.permutation(len(train_items))
        n_val = max(1, int(round(len(order) * cfg.val_fraction)))
        val_items = [train_items[i] for i in sorted(order[:n_val])]
        train_items = [train_items[i] for i in sorted(order[n_val:])]
    else:
        val_items, _ = _scan(os.path.join(cfg.root, cfg.val_dir), classes)
    return (FolderSource(train_items, cfg.skip_corrupt), FolderSource(val_items, cfg.skip_corrupt),
            list(classes))
