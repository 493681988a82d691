"""TFDS datasets by name through ``tfds.data_source`` (array_record: no TensorFlow needed)."""
from __future__ import annotations

import numpy as np

from jaxvision.data.errors import DataError


class TfdsSource:
    """Maps a TFDS random-access source to jaxvision's ``{"image", "label"}`` examples."""

    def __init__(self, source, image_key: str, label_key: str, where: str):
        self.source, self.image_key, self.label_key, self.where = source, image_key, label_key, where

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        ex = self.source[index]
        for key, field in ((self.image_key, "image_key"), (self.label_key, "label_key")):
            if key not in ex:
                raise DataError(f"{self.where}: example has no key {key!r} "
                                f"(data.tfds.{field}); keys are {sorted(ex)}")
        return {"image": np.asarray(ex[self.image_key]),
                "label": np.int32(ex[self.label_key])}


def tfds_sources(cfg):
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
    names = getattr(features[cfg.label_key], "names", None) if cfg.label_key in features else None
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
        out.append(TfdsSource(src, cfg.image_key, cfg.label_key, where))
    return out[0], out[1], list(names)
