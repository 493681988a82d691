"""Progress bar, console lines, ``metrics.jsonl`` and TensorBoard event files (tensorboardX: no
TensorFlow).

A batch job (stdout not a terminal) gets a text line every ``log_every`` steps instead of a bar
nobody sees.  TensorBoard and ``metrics.jsonl`` are written by process 0 only.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from jaxvision.tasks.base import grid


def summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without torch: tensorboardX imports torch,
    when it is installed, only to accept torch tensors (jaxvision hands it numpy), and that
    import cost a run's start-up 2-4 s wall (docs/performance.md, "The from-scratch run, part
    by part"). A process that imported torch already keeps it."""
    if "torch" in sys.modules or "tensorboardX.writer" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class Logger:
    def __init__(self, workdir, config, total, start, class_names, mean, std):
        SummaryWriter = summary_writer_class()
        first = jax.process_index() == 0
        self.writer = (SummaryWriter(os.path.join(workdir, "tb"))
                       if config.logging.tensorboard and first else None)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if first else None
        self.bar_visible = bool(config.logging.progress_bar) and sys.stdout.isatty()
        self.total, self.start, self.t_start = total, start, time.perf_counter()
        self.last_train: dict = {}
        self.class_names, self.norm = class_names, (tuple(mean), tuple(std))
        self.num_images = config.logging.num_images
        self._sample = None  # the examples drawn at each evaluation, read at the first
        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 disable=not self.bar_visible)
        self.task = self.progress.add_task("train", total=total, completed=start, status="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        if self.writer:
            self.writer.close()
        if self.jsonl:
            self.jsonl.close()

    def advance(self, step):
        self.progress.update(self.task, completed=step)

    def scalars(self, step, values: dict):
        # NaN is a metric's "undefined" (AP of an area range the data has no box in): left out,
        # not logged as a value TensorBoard warns about and a JSON reader may refuse
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        if self.jsonl:  # one object per line, flushed: a killed run keeps what it logged
            self.jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in
                                                               values.items()}}) + "\n")
            self.jsonl.flush()
        if "train/loss" in values:
            self.last_train = values
        if "train/loss" in values:
            self.progress.update(self.task, status=(
                f"loss {values['train/loss']:.4f} lr {values['train/lr']:.4g} "
                f"{values['train/images_per_s']:.0f} img/s"))

    def text_line(self, step) -> str:
        """The bar's line as text: loss, lr, images/s and the ETA from this session's pace."""
        v = self.last_train
        done = step - self.start
        eta = (time.perf_counter() - self.t_start) / max(done, 1) * (self.total - step)
        return (f"step {step}/{self.total}: train_loss={v.get('train/loss', float('nan')):.4f} "
                f"lr={v.get('train/lr', float('nan')):.4g} "
                f"images/s={v.get('train/images_per_s', 0.0):.1f} "
                f"ETA {int(eta) // 3600:d}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}")

    def samples(self, step, predict, variables, data, task):
        """A grid of the first ``logging.num_images`` validation examples as the task draws
        them (class names; image / truth / prediction triplets for segmentation).
        ``predict(variables, batch)``: the task's eval-mode outputs, jitted; the examples are
        read once per run and keep their shape, so it compiles once."""
        if not self.writer or not self.num_images:
            return
        if self._sample is None:  # the val split does not change during a run
            batch = next(iter(data.eval_loader()))
            n = min(self.num_images, int(batch["valid"].sum()))
            self._sample = {k: np.asarray(v[:n]) for k, v in batch.items()}
        batch = self._sample
        # this process's copy of the replicated weights: the forward runs here alone
        local = jax.tree.map(lambda a: a.addressable_data(0), variables)
        outputs = jax.device_get(predict(local, batch))
        # the loader's uint8 pixels: drawn as they are, nothing to undo
        tiles = task.draw(batch["image"], batch, outputs, self.class_names)
        self.writer.add_image("val/predictions", grid(tiles), step, dataformats="HWC")
