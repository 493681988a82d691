"""TFDS datasets by name through ``tfds.data_source`` (array_record: no TensorFlow needed)."""
from __future__ import annotations

import numpy as np

from jaxvision.data.errors import DataError
from jaxvision.data.transforms import check_mask


class TfdsSource:
    """Maps a TFDS random-access source to jaxvision's examples: ``{"image", "label"}``, or
    ``{"image", "mask"}`` when ``num_classes`` is given (segmentation)."""

    def __init__(self, source, image_key: str, label_key: str, where: str,
                 mask_key: str | None = None, num_classes: int = 0):
        self.source, self.image_key, self.label_key, self.where = source, image_key, label_key, where
        self.mask_key, self.num_classes = mask_key, num_classes

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        ex = self.source[index]
        target = ("mask_key", self.mask_key) if self.mask_key else ("label_key", self.label_key)
        for field, key in (("image_key", self.image_key), target):
            if key not in ex:
                raise DataError(f"{self.where}: example has no key {key!r} "
                                f"(data.tfds.{field}); keys are {sorted(ex)}")
        image = np.asarray(ex[self.image_key])
        if self.mask_key:
            where = f"{self.where} example {index} ({self.mask_key!r})"
            return {"image": image,
                    "mask": check_mask(image, ex[self.mask_key], self.num_classes, where)}
        return {"image": image, "label": np.int32(ex[self.label_key])}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # an optional dependency: say which extra brings it
        raise DataError("data.source='tfds' needs tensorflow-datasets: pip install "
                        f"'jaxvision[tfds]' ({e})") from None
    return tfds


def detection_example(ex, where: str, label_offset: int = 1, drop_crowd: bool = True) -> dict:
    """A TFDS detection example (``objects/bbox`` normalised [ymin, xmin, ymax, xmax],
    ``objects/label``; tfds coco/2017 and voc) as jaxvision's ``{"image", "boxes" xyxy pixels,
    "classes" = label + label_offset, "num_boxes"}``. Crowd objects (``objects/is_crowd``) and
    boxes with no width or height are dropped, as the COCO source drops them."""
    objects = ex.get("objects")
    if "image" not in ex or not isinstance(objects, dict) or not {"bbox", "label"} <= set(objects):
        raise DataError(f"{where}: expected features 'image', 'objects/bbox' and "
                        f"'objects/label'; the example has {sorted(ex)}"
                        + (f", objects {sorted(objects)}" if isinstance(objects, dict) else ""))
    image = np.asarray(ex["image"])
    h, w = image.shape[:2]
    bbox = np.asarray(objects["bbox"], np.float32).reshape(-1, 4)
    label = np.asarray(objects["label"]).reshape(-1)
    crowd = np.asarray(objects.get("is_crowd", np.zeros(len(label), bool)), bool).reshape(-1)
    if not len(bbox) == len(label) == len(crowd):
        raise DataError(f"{where}: objects/bbox has {len(bbox)} boxes but objects/label "
                        f"{len(label)} labels (objects/is_crowd {len(crowd)})")
    bad = ((bbox < 0) | (bbox > 1)).any(1) | (bbox[:, 2] < bbox[:, 0]) | (bbox[:, 3] < bbox[:, 1])
    if bad.any():
        raise DataError(f"{where}: objects/bbox {bbox[bad][0].tolist()} is not a normalised "
                        f"[ymin, xmin, ymax, xmax] box ({int(bad.sum())} such)")
    boxes = bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if drop_crowd:
        keep &= ~crowd
    return {"image": image, "boxes": boxes[keep],
            "classes": (label[keep] + label_offset).astype(np.int32),
            "num_boxes": np.int32(keep.sum())}


class TfdsDetectionSource:
    """A TFDS random-access source mapped by ``detection_example``."""

    def __init__(self, source, where: str, label_offset: int = 1, drop_crowd: bool = True):
        self.source, self.where = source, where
        self.label_offset, self.drop_crowd = label_offset, drop_crowd

    def __repr__(self):  # grain compares repr(source) when restoring a loader's state
        return (f"TfdsDetectionSource({self.where!r}, label_offset={self.label_offset}, "
                f"drop_crowd={self.drop_crowd}, n={len(self)})")

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return detection_example(self.source[index], f"{self.where} example {index}",
                                 self.label_offset, self.drop_crowd)


def tfds_detection_source(name: str, split: str, data_dir: str | None = None,
                          label_offset: int = 1, drop_crowd: bool = True):
    """(source, class_names) of a TFDS detection split; with ``label_offset=1`` (the default)
    label 0 is "__background__" and TFDS label i is class i + 1."""
    tfds = _import_tfds()
    where = f"tfds {name}[{split}] in {data_dir or 'the default data_dir'}"
    try:
        features = tfds.builder(name, data_dir=data_dir).info.features
    except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
        raise DataError(f"{where}: no such TFDS dataset ({e})") from e
    objects = features["objects"] if "objects" in features else {}
    if not {"bbox", "label"} <= set(objects.keys() if hasattr(objects, "keys") else ()):
        raise DataError(f"{where}: not a detection dataset: expected features 'objects/bbox' "
                        f"and 'objects/label' (features: {list(features)})")
    names = list(objects["label"].names)
    if label_offset:
        names = ["__background__"] * label_offset + names
    try:
        src = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:
        raise DataError(f"{where}: cannot open the split as an array_record data source "
                        f"({type(e).__name__}: {e}); prepare it with `tfds build {name} "
                        "--file_format=array_record`") from e
    return TfdsDetectionSource(src, where, label_offset, drop_crowd), names


def tfds_sources(cfg, targets: str = "classification"):
    if not cfg.name:
        raise DataError("data.tfds.name is empty: give a TFDS dataset name, e.g. 'mnist'")
    if targets == "detection":
        (train, names), (val, _) = (tfds_detection_source(cfg.name, s, cfg.data_dir)
                                    for s in (cfg.train_split, cfg.val_split))
        return train, val, names
    tfds = _import_tfds()
    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
        raise DataError(f"data.tfds.name {cfg.name!r}: no such TFDS dataset ({e})") from e
    features = builder.info.features
    seg = targets == "segmentation"
    if seg:
        if cfg.mask_key not in features:
            raise DataError(f"data.tfds.mask_key {cfg.mask_key!r}: {cfg.name} has no such "
                            f"feature (features: {list(features)})")
        names = list(cfg.class_names)
        if not names:
            raise DataError("data.tfds.class_names is empty: a segmentation mask feature "
                            f"carries no class names; list them (mask value i is name i)")
    else:
        names = (getattr(features[cfg.label_key], "names", None)
                 if cfg.label_key in features else None)
    if not names:
        raise DataError(f"data.tfds.label_key {cfg.label_key!r}: {cfg.name} has no ClassLabel "
                        f"feature by that name (features: {list(builder.info.features)})")
    out = []
    for split in (cfg.train_split, cfg.val_split):
        where = f"tfds {cfg.name}[{split}] in {cfg.data_dir or 'the default data_dir'}"
        try:
            src = tfds.data_source(cfg.name, split=split, data_dir=cfg.data_dir)
        except Exception as e:
            raise DataError(f"{where}: cannot open the split as an array_record data source "
                            f"({type(e).__name__}: {e}); prepare it with `tfds build "
                            f"{cfg.name} --file_format=array_record`") from e
        out.append(TfdsSource(src, cfg.image_key, cfg.label_key, where,
                               cfg.mask_key if seg else None, len(names)))
    return out[0], out[1], list(names)
