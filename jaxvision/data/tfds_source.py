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


def tfds_sources(cfg, task: str = "classification"):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # an optional dependency: say which extra brings it
        raise DataError("data.source='tfds' needs tensorflow-datasets: pip install "
                        f"'jaxvision[tfds]' ({e})") from None

    if not cfg.name:
        raise DataError("data.tfds.name is empty: give a TFDS dataset name, e.g. 'mnist'")
    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
        raise DataError(f"data.tfds.name {cfg.name!r}: no such TFDS dataset ({e})") from e
    features = builder.info.features
    seg = task == "segmentation"
    if seg:
        if cfg.mask_key not in features:
            raise DataError(f"data.tfds.mask_key {cfg.mask_key!r}: {cfg.name} has no such "
                            f"feature (features: {list(features)})")
        names = list(cfg.class_names)
        if not names:
            raise DataError(f"data.tfds.class_names is empty: a segmentation mask feature "
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
