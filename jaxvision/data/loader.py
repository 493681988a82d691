"""Datasets -> grain loaders: shuffled infinite train batches, exact-once padded eval batches."""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from jaxvision.data.errors import DataError
from jaxvision.data.repeated_sampler import RepeatedAugmentSampler
from jaxvision.data.shapes import ShapesSource
from jaxvision.data.workers import RunWorker


@dataclasses.dataclass
class Data:
    train_source: Any
    val_source: Any
    class_names: list
    cfg: Any
    mean: tuple
    std: tuple
    resize_size: int
    # what the data serves (a task class of jaxvision.tasks, which data/ never imports): it
    # gives the grain transforms, ``task.train_transform(data)`` / ``eval_transform(data)``, and
    # checks its targets, ``task.check_targets(data, log)``
    task: Any

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

    @property
    def eval_image_size(self) -> int:
        """The classification eval crop: data.eval_image_size, else the train crop."""
        return self.cfg.get("eval_image_size") or self.cfg.image_size

    @property
    def preprocessing(self) -> dict:
        """This run's eval transform as the registry spells a model's
        (:func:`jaxvision.registry.eval_preprocessing`): what a predict or an export of it uses."""
        from jaxvision.registry import eval_preprocessing

        return eval_preprocessing(self.resize_size, self.eval_image_size, self.cfg.interpolation,
                                  self.mean, self.std)

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
        shards = grain.sharding.ShardOptions(process_index, process_count, True)
        if c.get("repeated_augment", 0):
            try:
                sampler = RepeatedAugmentSampler(self.num_train, c.repeated_augment, shards,
                                                 seed)
            except ValueError as e:
                raise DataError(f"data.repeated_augment: {e}") from None
        else:
            sampler = grain.samplers.IndexSampler(self.num_train, shards, shuffle=True,
                                                  num_epochs=None, seed=seed)
        local = self._local_batch(c.batch_size, process_count)
        ops = [self.train_transform(), grain.transforms.Batch(local, drop_remainder=True)]
        if c.num_workers:
            _absl_flags_ready()
            ops.insert(0, RunWorker())  # no orphans, no shared memory left after a SIGKILL
        threads = read_threads(c.num_workers)
        read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads and local)
        return grain.DataLoader(data_source=self.train_source, sampler=sampler, operations=ops,
                                worker_count=c.num_workers, read_options=read)

    def train_transform(self):
        return self.task.train_transform(self)

    def eval_transform(self):
        return self.task.eval_transform(self)

    def check_targets(self, num_classes: int, log=print) -> None:
        """Before training: one DataError if the data holds class ids a head of
        ``num_classes`` outputs cannot predict (which ids, which count); and, for detection,
        what the task says of its targets (detection: how many boxes ``data.detection.max_boxes``
        drops from training)."""
        over = [i for i, name in enumerate(self.class_names) if i >= num_classes and name != "N/A"]
        if over:
            where = getattr(self.train_source, "annotation_file", None) or f"data.{self.cfg.source}"
            ids = (", ".join(map(str, over)) if len(over) <= 8
                   else f"{', '.join(map(str, over[:4]))}, ... {over[-1]}")
            raise DataError(f"model.num_classes={num_classes} is smaller than the data's "
                            f"{self.num_classes} classes: class ids {ids} of {where} exceed a "
                            f"head of ids 0..{num_classes - 1}; set model.num_classes to "
                            f"{self.num_classes} (0 takes the data's count)")
        self.task.check_targets(self, log)

    def eval_loader(self, process_index: int = 0, process_count: int = 1):
        """Every example exactly once; the last batch is padded and ``valid`` marks real ones.

        The index range is padded to a multiple of the GLOBAL eval batch, so every process
        gets the same number of batches (a jitted multi-host eval step needs that) and
        process ``p`` takes examples ``p, p + P, ...``.

        With ``data.num_workers`` > 0 that many threads decode and transform examples (PIL
        lets go of the GIL while it decodes and resamples), at most two batches ahead; grain
        returns them in index order, so the batches are those of ``num_workers=0``. Threads,
        not processes: an eval pass starts no workers and pickles nothing.
        """
        c = self.cfg
        batch = self._local_batch(c.eval_batch_size, process_count)
        n = self.num_val
        n_pad = -(-n // c.eval_batch_size) * c.eval_batch_size
        transform = self.eval_transform()
        source = self.val_source

        def load(i):
            ex = transform.map(source[min(int(i), n - 1)])  # a padding slot repeats the last
            return {**ex, "valid": np.bool_(i < n)}

        indices = np.arange(process_index, n_pad, process_count)
        # explicit options: iterating a MapDataset takes grain's defaults (16 threads, 500
        # elements ahead), which on batches held the whole split in memory at once
        workers = c.num_workers
        read = grain.ReadOptions(num_threads=workers,
                                 prefetch_buffer_size=2 * batch if workers else 0)
        return (grain.MapDataset.source(indices).map(load).to_iter_dataset(read)
                .batch(batch, drop_remainder=False))


def read_threads(num_workers: int) -> int:
    """Threads that read train examples a batch ahead, in each worker (or in the training
    process with ``num_workers=0``).

    One, not grain's default of 16 threads and 500 decoded images ahead, which held ~280 MB of
    500x375 images per worker, took 2 s to a first batch and spent more CPU per image polling
    its buffer (docs/performance.md). None where the training process reads on the CPU
    backend: the step's XLA threads already keep every core busy, so a reading thread cannot
    run beside them and only adds a hand-off per example (32-px PNGs: 3,200 against 4,200
    images/s read alone; the from-scratch resnet18 run 2-4 s faster in 45)."""
    if num_workers:
        return 1
    import jax  # the loader alone imports no jax

    return 0 if jax.default_backend() == "cpu" else 1


def _absl_flags_ready():
    """grain's worker processes read absl flags, which a program without absl never parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def preprocessing(cfg, model_name: str | None = None, targets: str = "classification"):
    """(mean, std, resize_size) of the data config ``cfg``, else the model's spec; reads no
    data. ``targets``: what the examples carry (see :func:`make_data`)."""
    from jaxvision.registry import spec_or_default

    spec = spec_or_default(model_name)
    mean = tuple(cfg.mean) if cfg.mean is not None else spec.mean
    std = tuple(cfg.std) if cfg.std is not None else spec.std
    resize = cfg.resize_size
    if resize is None and targets == "segmentation":
        resize = cfg.image_size  # the eval size; torchvision's VOC recipe: 520 (crop 480)
    elif resize is None:
        ratio = spec.resize_size / spec.crop_size
        resize = int(round(cfg.image_size * ratio))
    return mean, std, resize


def predict_data(cfg, model_name: str | None, class_names, task) -> Data:
    """A ``Data`` without sources: the preprocessing and class names a trained model predicts
    with, on a machine that need not hold the dataset."""
    return Data(None, None, list(class_names), cfg,
                *preprocessing(cfg, model_name, task.data_task), task)


def make_data(cfg, model_name: str | None, task) -> Data:
    """The train and val sources of ``cfg.source`` for ``task``, which gives the transforms
    (``jaxvision.tasks.build_data``): they yield its ``data_task``'s targets ("classification":
    labels, "segmentation": masks, "detection": boxes and the instance fields data.detection
    asks for)."""
    targets = task.data_task
    mean, std, resize = preprocessing(cfg, model_name, targets)
    seg = targets == "segmentation"
    if cfg.source == "shapes":
        s = cfg.shapes
        # masks hold 0 for background and kind + 1 on the shape; for detection the box classes
        # shift alike (label 0 is the background, as torchvision's detectors count classes)
        shift = int(targets == "detection")
        masks = shift and _instance_fields(cfg, "masks")
        train = ShapesSource(s.num_train, s.num_classes, s.image_size, s.seed, shift, masks)
        val = ShapesSource(s.num_val, s.num_classes, s.image_size, s.seed + 1_000_003, shift,
                           masks)
        names = (["background"] if seg or shift else []) + train.class_names
    elif cfg.source == "imagefolder":
        if targets != "classification":
            raise DataError(f"data.source='imagefolder' has no masks or boxes: for {targets} "
                            "use 'voc' (masks), 'coco' (boxes), 'tfds' or 'shapes'")
        from jaxvision.data.imagefolder import imagefolder_sources

        train, val, names = imagefolder_sources(cfg.imagefolder)
    elif cfg.source == "coco":
        if targets != "detection":
            raise DataError("data.source='coco' holds boxes: set task='detection'")
        from jaxvision.data.coco import coco_sources

        d = cfg.detection
        train, val, names = coco_sources(cfg.coco, d.masks, d.keypoints, d.crowd)
    elif cfg.source == "voc":
        from jaxvision.data.voc import voc_sources

        det = targets == "detection"  # the objects of SegmentationObject/
        train, val, names = voc_sources(cfg.voc, det, det and _instance_fields(cfg, "masks"))
    elif cfg.source == "tfds":
        from jaxvision.data.tfds_source import tfds_sources

        if targets == "detection":
            _instance_fields(cfg, "")
        train, val, names = tfds_sources(cfg.tfds, targets)
    else:
        raise DataError("data.source must be 'shapes', 'imagefolder', 'voc', 'coco' or "
                        f"'tfds', got {cfg.source!r}")
    if cfg.source == "voc" and targets == "classification":
        raise DataError("data.source='voc' holds segmentation masks: set task='segmentation' "
                        "(or 'detection' with root/SegmentationObject/)")
    return Data(train, val, names, cfg, mean, std, resize, task)


def _instance_fields(cfg, supported: str) -> bool:
    """Whether data.detection asks for masks; a DataError where it asks for instance fields
    that ``data.source`` cannot give (``supported``: the one it can, if any)."""
    d = cfg.detection
    for field in ("masks", "keypoints"):
        if d[field] and field != supported:
            raise DataError(f"data.detection.{field}=True, but data.source={cfg.source!r} "
                            f"holds no instance {field}: use 'coco'"
                            + (", 'voc' or 'shapes' (masks)" if field == "masks" else ""))
    return bool(d.masks)

