"""Progress bar, console lines and TensorBoard event files (tensorboardX: no TensorFlow)."""
from __future__ import annotations

import os

import jax
import numpy as np
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from jaxvision.tasks.base import denormalize, grid


class Logger:
    def __init__(self, workdir, config, total, start, class_names, mean, std):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(workdir, "tb")) if config.logging.tensorboard else None
        self.class_names, self.mean, self.std = class_names, np.array(mean), np.array(std)
        self.num_images = config.logging.num_images
        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 disable=not config.logging.progress_bar)
        self.task = self.progress.add_task("train", total=total, completed=start, status="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        if self.writer:
            self.writer.close()

    def advance(self, step):
        self.progress.update(self.task, completed=step)

    def scalars(self, step, values: dict):
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        if "train/loss" in values:
            self.progress.update(self.task, status=(
                f"loss {values['train/loss']:.4f} lr {values['train/lr']:.4g} "
                f"{values['train/images_per_s']:.0f} img/s"))

    def samples(self, step, model, variables, data, task):
        """A grid of validation examples as the task draws them (class names; image / truth /
        prediction triplets for segmentation)."""
        if not self.writer or not self.num_images:
            return
        batch = next(iter(data.eval_loader()))
        n = min(self.num_images, int(batch["valid"].sum()))
        batch = {k: v[:n] for k, v in batch.items()}
        outputs = jax.device_get(model.apply(variables, batch["image"], train=False))
        images = denormalize(batch["image"], self.mean, self.std)
        tiles = task.draw(images, batch, outputs, self.class_names)
        self.writer.add_image("val/predictions", grid(tiles), step, dataformats="HWC")
