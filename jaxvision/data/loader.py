"""Datasets -> grain loaders: shuffled infinite train batches, exact-once padded eval batches."""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from jaxvision.data import transforms as T
from jaxvision.data.errors import DataError
from jaxvision.data.shapes import ShapesSource
from jaxvision.data.workers import ExitWithParent


@dataclasses.dataclass
class Data:
    train_source: Any
    val_source: Any
    class_names: list
    cfg: Any
    mean: tuple
    std: tuple
    resize_size: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        return len(self.train_source)

    @property
    def num_val(self) -> int:
        return len(self.val_source)

    @property
    def num_skipped(self) -> int:
        """Corrupt image files skipped so far (image folders with skip_corrupt) in this process."""
        return sum(getattr(s, "num_skipped", 0) for s in (self.train_source, self.val_source))

    def _local_batch(self, batch_size, process_count):
        if batch_size % process_count:
            raise DataError(f"data.batch_size {batch_size} is not divisible by the number of "
                            f"processes {process_count}")
        return batch_size // process_count

    def train_loader(self, seed: int, process_index: int = 0, process_count: int = 1):
        c = self.cfg
        if c.batch_size > self.num_train:
            raise DataError(f"data.batch_size {c.batch_size} exceeds the {self.num_train} "
                            "training examples")
        sampler = grain.samplers.IndexSampler(
            self.num_train, grain.sharding.ShardOptions(process_index, process_count, True),
            shuffle=True, num_epochs=None, seed=seed)
        a = c.augment
        ops = [T.TrainTransform(c.image_size, self.mean, self.std, a.random_resized_crop,
                                tuple(a.scale), tuple(a.ratio), a.hflip, c.interpolation),
               grain.transforms.Batch(self._local_batch(c.batch_size, process_count),
                                      drop_remainder=True)]
        if c.num_workers:
            _absl_flags_ready()
            ops.insert(0, ExitWithParent())  # no orphans after a SIGKILL of the trainer
        return grain.DataLoader(data_source=self.train_source, sampler=sampler, operations=ops,
                                worker_count=c.num_workers)

    def eval_loader(self, process_index: int = 0, process_count: int = 1):
        """Every example exactly once; the last batch is padded and ``mask`` marks real ones.

        The index range is padded to a multiple of the GLOBAL eval batch, so every process
        gets the same number of batches (a jitted multi-host eval step needs that) and
        process ``p`` takes examples ``p, p + P, ...``.
        """
        c = self.cfg
        batch = self._local_batch(c.eval_batch_size, process_count)
        n = self.num_val
        n_pad = -(-n // c.eval_batch_size) * c.eval_batch_size
        transform = T.EvalTransform(c.image_size, self.resize_size, self.mean, self.std,
                                    c.interpolation)
        source = self.val_source

        def load(i):
            ex = transform.map(source[min(int(i), n - 1)])  # a padding slot repeats the last
            return {**ex, "mask": np.bool_(i < n)}

        indices = np.arange(process_index, n_pad, process_count)
        return grain.MapDataset.source(indices).map(load).batch(batch, drop_remainder=False)


def _absl_flags_ready():
    """grain's worker processes read absl flags, which a program without absl never parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def build_data(cfg, model_name: str | None = None) -> Data:
    from jaxvision.registry import IMAGENET_MEAN, IMAGENET_STD, get_spec

    spec = get_spec(model_name) if model_name else None
    mean = tuple(cfg.mean) if cfg.mean is not None else (spec.mean if spec else IMAGENET_MEAN)
    std = tuple(cfg.std) if cfg.std is not None else (spec.std if spec else IMAGENET_STD)
    resize = cfg.resize_size
    if resize is None:
        ratio = spec.resize_size / spec.crop_size if spec else 256 / 224
        resize = int(round(cfg.image_size * ratio))
    if cfg.source == "shapes":
        s = cfg.shapes
        train = ShapesSource(s.num_train, s.num_classes, s.image_size, s.seed)
        val = ShapesSource(s.num_val, s.num_classes, s.image_size, s.seed + 1_000_003)
        names = train.class_names
    elif cfg.source == "imagefolder":
        from jaxvision.data.imagefolder import imagefolder_sources

        train, val, names = imagefolder_sources(cfg.imagefolder)
    elif cfg.source == "tfds":
        from jaxvision.data.tfds_source import tfds_sources

        train, val, names = tfds_sources(cfg.tfds)
    else:
        raise DataError(f"data.source must be 'shapes', 'imagefolder' or 'tfds', "
                        f"got {cfg.source!r}")
    return Data(train, val, names, cfg, mean, std, resize)
