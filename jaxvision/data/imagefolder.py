"""torchvision's ImageFolder layout: ``root/<split>/<class>/<image>``, class = folder name."""
from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image

from jaxvision.data.errors import DataError
from jaxvision.data.transforms import to_rgb

# torchvision.datasets.folder.IMG_EXTENSIONS
LOG = logging.getLogger("jaxvision.data")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _scan(directory: str, classes=None):
    if not os.path.exists(directory):
        raise DataError(f"{directory}: does not exist (expected root/<split>/<class>/<image>)")
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such image-folder directory "
                        "(expected root/<split>/<class>/<image>)")
    found = sorted(d.name for d in os.scandir(directory) if d.is_dir())
    if not found:
        raise DataError(f"{directory}: is empty, expected one sub-folder per class")
    if len(found) == 1 and classes is None:
        raise DataError(f"{directory}: holds a single class folder ({found[0]!r}); a classifier "
                        "needs at least 2 (expected root/<split>/<class>/<image>)")
    classes = classes or found
    if found != list(classes):
        raise DataError(f"{directory}: class folders {found} do not match the train split's "
                        f"{list(classes)} (missing {sorted(set(classes) - set(found))}, "
                        f"extra {sorted(set(found) - set(classes))})")
    items = []
    for i, name in enumerate(classes):
        sub = os.path.join(directory, name)
        # recursively, in sorted order, following links: torchvision's make_dataset
        files = [(os.path.join(root, f), i)
                 for root, _, names in sorted(os.walk(sub, followlinks=True))
                 for f in sorted(names) if f.lower().endswith(EXTENSIONS)]
        if not files:
            raise DataError(f"{sub}: class folder {name!r} holds no images with extensions "
                            f"{EXTENSIONS}")
        items += files
    return items, classes


class FolderSource:
    def __repr__(self):
        # grain checks repr(source) when a loader's state is restored: it must not hold an id
        first = self.items[0][0] if self.items else None
        return f"FolderSource({len(self.items)} images, first={first!r})"

    def __init__(self, items, skip_corrupt: bool, lazy: bool = False):
        self.items, self.skip_corrupt = items, skip_corrupt
        # lazy: JPEGs come opened but undecoded, for the transform to draft (data.imagefolder.draft)
        self.lazy = lazy
        # paths found corrupt by THIS process (grain workers keep their own copy)
        self.skipped: set[str] = set()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        try:
            if self.lazy:
                img = Image.open(path)  # reads the header; the transform decodes
                if img.format == "JPEG":
                    return {"image": img, "label": np.int32(label)}
                img.close()
            with Image.open(path) as img:
                # a PIL image, as torchvision's ImageFolder gives: the transforms crop and
                # resize it as it is (an array copy of a 12-MP photo took 13 ms)
                image = to_rgb(img)
                image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # what PIL raises on broken files (and on images too large to be safe)
            if not self.skip_corrupt:
                raise DataError(f"{path}: cannot be read as an image ({e}); set "
                                "data.imagefolder.skip_corrupt=True to replace it") from e
            if path not in self.skipped:
                self.skipped.add(path)
                LOG.warning("%s: cannot be read (%s); replaced by the next image "
                            "(data.imagefolder.skip_corrupt; %d replaced so far in this process: "
                            "%s)", path, e, len(self.skipped), ", ".join(sorted(self.skipped)))
            if len(self.skipped) >= len(self.items):
                raise DataError(f"{path}: every image under this split is corrupt") from e
            # a grain source must return something for every index: the neighbour stands in
            return self[(index + 1) % len(self)]
        return {"image": image, "label": np.int32(label)}


def imagefolder_sources(cfg):
    if not cfg.root:
        raise DataError("data.imagefolder.root is empty: give --config.data.imagefolder.root=DIR")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise DataError(f"data.imagefolder.val_fraction must be in [0, 1), got {cfg.val_fraction}")
    draft = cfg.get("draft", False)
    if draft and cfg.skip_corrupt:
        raise DataError("data.imagefolder.draft=True decodes JPEGs in the train transform, where "
                        "a corrupt file cannot be replaced: set data.imagefolder.skip_corrupt="
                        "False or draft=False")
    train_dir = os.path.join(cfg.root, cfg.train_dir)
    if cfg.val_fraction and not os.path.isdir(train_dir):
        train_dir = cfg.root  # a single root/<class>/<image> folder, split below
    train_items, classes = _scan(train_dir)
    if cfg.val_fraction:
        rng = np.random.default_rng(0)
        order = rng.permutation(len(train_items))
        n_val = max(1, int(round(len(order) * cfg.val_fraction)))
        val_items = [train_items[i] for i in sorted(order[:n_val])]
        train_items = [train_items[i] for i in sorted(order[n_val:])]
    else:
        val_items, _ = _scan(os.path.join(cfg.root, cfg.val_dir), classes)
    return (FolderSource(train_items, cfg.skip_corrupt, draft), FolderSource(val_items, cfg.skip_corrupt),
            list(classes))
