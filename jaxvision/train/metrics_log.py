"""Progress bar, console lines and TensorBoard event files (tensorboardX: no TensorFlow)."""
from __future__ import annotations

import os

import jax
import numpy as np
from PIL import Image, ImageDraw
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


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

    def samples(self, step, model, variables, data):
        """A grid of validation images with predicted (and true) class names."""
        if not self.writer or not self.num_images:
            return
        batch = next(iter(data.eval_loader()))
        n = min(self.num_images, int(batch["mask"].sum()))
        logits = model.apply(variables, batch["image"][:n], train=False)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        pred = np.asarray(jax.device_get(logits)).argmax(-1)
        tiles = []
        for img, p, y in zip(batch["image"][:n], pred, batch["label"][:n]):
            rgb = np.clip((img * self.std + self.mean) * 255, 0, 255).astype(np.uint8)
            tile = Image.fromarray(rgb).resize((96, 96), Image.NEAREST)
            canvas = Image.new("RGB", (96, 112), "white")
            canvas.paste(tile, (0, 0))
            ImageDraw.Draw(canvas).text((2, 98), f"{self.class_names[p]}"
                                        + ("" if p == y else f" ({self.class_names[y]})"),
                                        fill="green" if p == y else "red")
            tiles.append(np.asarray(canvas))
        cols = min(8, n)
        rows = -(-n // cols)
        tiles += [np.full_like(tiles[0], 255)] * (rows * cols - n)
        grid = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], 1)
                               for r in range(rows)], 0)
        self.writer.add_image("val/predictions", grid, step, dataformats="HWC")
