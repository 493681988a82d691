"""What a task is: the engine (train/) calls these and never names a task's metric.

A task bundles what differs between classification, segmentation and detection: the model it
builds, its loss and on-device metric sums (pure, jittable), the host-side summary of those sums,
the best-checkpoint metric and its mode, the checkpoint metadata that must match on resume, and
how a prediction is drawn.
"""
from __future__ import annotations

import re

import jax
import numpy as np
from PIL import Image


class Task:
    name: str = ""
    data_task: str = ""  # the data its batches carry: "classification" | "segmentation" | ...
    best_metric: str = ""  # a key of ``summary()``'s result
    best_mode: str = "max"  # "max" | "min"
    # checkpoint metadata a resumed run must share with the checkpoints in its workdir
    meta_keys: tuple[str, ...] = ("model", "num_classes")
    # the registry families (ModelSpec.family) this task trains; classification's is empty: it
    # takes every family that no other task claims (tasks.check_model)
    model_families: tuple[str, ...] = ()

    @classmethod
    def best_for(cls, config) -> str:
        """The metric that picks the best checkpoint of a run of ``config`` (a class method:
        a run's checkpoints are chosen before its class count is known); ``best_metric``."""
        return cls.best_metric

    @classmethod
    def check_config(cls, config) -> None:
        """One error for a model/data pairing of ``config`` this task cannot train, raised at
        config time (``check_model``, ``from_config``): the batches then need no check."""

    def build_model(self, config, dtype, **engine_kwargs):
        """The linen Module this task trains (``config.model`` names it); ``engine_kwargs``: what
        the engine's settings imply (``freeze.norm_eval``'s norm)."""
        import jaxvision as jv

        m = config.model
        kwargs = {**m.kwargs.to_dict(), **engine_kwargs, **self.model_kwargs()}
        try:
            return jv.create_model(m.name, num_classes=self.num_classes, dtype=dtype, **kwargs)
        except TypeError as e:
            # a mistyped key of the free-form model.kwargs: name the config key, not the class
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if bad and bad.group(1) in m.kwargs:
                raise ValueError(f"config key 'model.kwargs.{bad.group(1)}': {m.name} takes no "
                                 f"such argument ({e})") from None
            raise

    def model_kwargs(self) -> dict:
        return {}

    # -- data (host) ----------------------------------------------------------------------
    @classmethod
    def train_transform(cls, data):
        """The grain transform of one training example of ``data`` (a ``jaxvision.data.Data``:
        its config, sources and preprocessing)."""
        raise NotImplementedError

    @classmethod
    def eval_transform(cls, data):
        """The grain transform of one eval (or predict) example of ``data``."""
        raise NotImplementedError

    @classmethod
    def check_targets(cls, data, log) -> None:
        """Before training, after ``data``'s class-id check: what the task has to say of the
        training targets (a line to ``log``, or a DataError); nothing by default."""

    # -- jitted ---------------------------------------------------------------------------
    def forward(self, model, variables, batch, train: bool, **apply_kwargs):
        """The model's outputs on ``batch`` that ``loss`` (train) or ``eval_sums`` read."""
        return model.apply(variables, batch["image"], train=train, **apply_kwargs)

    def train_batch(self, batch, key):
        """The normalised train batch after the task's batch-level augmentation (``key``: the
        step's rng for it); none by default."""
        return batch

    def loss(self, outputs, batch):
        """(scalar loss, dict of metric sums) of a train-mode forward pass on ``batch``."""
        raise NotImplementedError

    def eval_sums(self, outputs, batch) -> dict:
        """Metric sums of an eval-mode forward pass; padded examples (``valid`` False) count 0."""
        raise NotImplementedError

    # -- host -----------------------------------------------------------------------------
    def accumulate(self, total, sums):
        """Adds one eval batch's sums (device arrays) to the running ``total`` on the host, in
        64 bits: a confusion matrix over a large split outgrows float32's exact integers."""
        sums = {k: np.asarray(v, np.int64 if np.issubdtype(np.asarray(v).dtype, np.integer)
                              else np.float64) for k, v in jax.device_get(sums).items()}
        return sums if total is None else {k: total[k] + v for k, v in sums.items()}

    def train_summary(self, sums) -> dict:
        """Scalars (without prefix) from the train sums of a logging interval."""
        return {}

    def summary(self, sums) -> dict:
        """``val_*`` scalars from the eval sums over a whole split; ``val_count`` examples."""
        raise NotImplementedError

    def details(self, sums, class_names) -> dict:
        """What ``jaxvision eval`` adds to the summary (e.g. per-class IoU)."""
        return {}

    def predict(self, model, variables, paths, data, **options) -> list[str]:
        """``jaxvision predict``: a printable line per image (and files it writes); the
        ``conv_lowering`` option is the run's (``layers.lowering.jit``)."""
        raise NotImplementedError

    def lr_multipliers(self, params):
        """A pytree of floats shaped like ``params`` (per-leaf lr factor), or None."""
        return None

    def draw(self, images, batch, outputs, class_names) -> list[np.ndarray]:
        """One RGB uint8 tile per example for TensorBoard (``images`` are uint8 RGB)."""
        raise NotImplementedError


def grid(tiles, cols: int = 8) -> np.ndarray:
    """Equal-sized HWC tiles -> one image, white where a row is short."""
    n = len(tiles)
    cols = min(cols, n)
    rows = -(-n // cols)
    tiles = list(tiles) + [np.full_like(tiles[0], 255)] * (rows * cols - n)
    return np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], 1)
                           for r in range(rows)], 0)


def read_image(path):
    """An RGB PIL image, or a ValueError naming the file."""
    from jaxvision.data.transforms import to_rgb

    try:
        with Image.open(path) as img:
            img.load()  # read now: the file closes when the block ends
            return to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def output_paths(paths, out_dir: str) -> list[str]:
    """``<out_dir>/<name>.png`` per input path, or one ValueError naming two inputs that would
    write the same file (a/x.jpg and b/x.jpg): no prediction overwrites another."""
    import os

    outs, first = [], {}
    for path in paths:
        dst = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        other = first.setdefault(dst, path)
        if os.path.realpath(other) != os.path.realpath(path):
            raise ValueError(f"{other} and {path} would both be written to {dst}; predict them "
                             "in separate runs (--out) or rename one")
        outs.append(dst)
    return outs
