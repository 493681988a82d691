"""Semantic segmentation: per-pixel cross-entropy with an ignore index, an aux head, and mean IoU
and pixel accuracy from one confusion matrix over the whole split (torchvision's reference)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image, ImageDraw

from jaxvision.ops.labels import IGNORE
from jaxvision.layers import lowering
from jaxvision.tasks.base import Task, output_paths, read_image


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class id), (n, 3) uint8; 255 is ignore."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


PALETTE = voc_palette()


def split_outputs(out):
    """(main logits, aux logits or None): segmenters return ``{"out", "aux"}`` as torchvision."""
    if isinstance(out, dict):
        return out["out"], out.get("aux")
    return out, None


def pixel_ce(logits, mask, ignore_index: int = IGNORE):
    """(sum of per-pixel CE over non-ignored pixels, their count)."""
    keep = mask != ignore_index
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         jnp.where(keep, mask, 0))
    return jnp.sum(ce * keep), jnp.sum(keep).astype(jnp.float32)


def confusion(pred, truth, weight, num_classes: int):
    """(num_classes, num_classes) int32 counts, rows the truth, columns the prediction; pixels
    with weight 0 (ignored or padding) count nothing."""
    idx = jnp.where(weight, truth * num_classes + pred, 0).reshape(-1)
    cm = jnp.zeros(num_classes * num_classes, jnp.int32).at[idx].add(
        weight.reshape(-1).astype(jnp.int32))
    return cm.reshape(num_classes, num_classes)


def iou_from_confusion(cm):
    """Per-class IoU (NaN for a class absent from both truth and prediction), mean IoU over the
    classes that are not NaN, and pixel accuracy. Leaving absent classes out of the mean is the
    usual convention (mmseg's nanmean); torchvision's reference would report NaN."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    total = cm.sum()
    return iou, miou, float(tp.sum() / total) if total else float("nan")


class Segmentation(Task):
    name = "segmentation"
    data_task = "segmentation"
    best_metric = "val_miou"
    best_mode = "max"
    meta_keys = ("model", "num_classes", "task")
    model_families = ("segmentation",)

    def __init__(self, num_classes: int, aux_weight: float = 0.5, aux_lr_mult: float = 10.0,
                 aux_loss: bool = False, ignore_index: int = IGNORE):
        self.num_classes, self.aux_weight = int(num_classes), float(aux_weight)
        self.aux_lr_mult, self.aux_loss = float(aux_lr_mult), bool(aux_loss)
        self.ignore_index = int(ignore_index)

    @classmethod
    def from_config(cls, config, num_classes):
        s = config.segmentation
        return cls(num_classes, s.aux_weight, s.aux_lr_mult, s.aux_loss)

    @classmethod
    def train_transform(cls, data):
        from jaxvision.data import transforms as T

        c = data.cfg
        s = c.segmentation
        return T.SegTrainTransform(c.image_size, data.resize_size, tuple(s.scale_range),
                                   s.hflip, c.interpolation)

    @classmethod
    def eval_transform(cls, data):
        from jaxvision.data import transforms as T

        c = data.cfg
        canvas = c.segmentation.eval_size or max(c.image_size, data.resize_size)
        return T.SegEvalTransform(data.resize_size, canvas, c.interpolation)

    def model_kwargs(self):
        # torchvision's segmentation builders take aux_loss; only ask for the head when wanted
        return {"aux_loss": True} if self.aux_loss else {}

    def loss(self, outputs, batch):
        out, aux = split_outputs(outputs)
        mask = batch["mask"]
        s, n = pixel_ce(out, mask, self.ignore_index)
        n_safe = jnp.maximum(n, 1.0)  # torch gives NaN on an all-ignored batch; we give 0
        loss = s / n_safe
        if aux is not None:
            loss = loss + self.aux_weight * pixel_ce(aux, mask, self.ignore_index)[0] / n_safe
        keep = mask != self.ignore_index
        correct = jnp.sum((jnp.argmax(out, -1) == mask) & keep).astype(jnp.float32)
        return loss, {"pixels_correct": correct, "pixels": n}

    def eval_sums(self, outputs, batch):
        out = split_outputs(outputs)[0]
        mask = batch["mask"]
        weight = (mask != self.ignore_index) & batch["valid"][:, None, None]
        ce_sum, _ = pixel_ce(out, jnp.where(weight, mask, self.ignore_index), self.ignore_index)
        pred = jnp.argmax(out, -1)
        return {"loss_sum": ce_sum, "pixels": jnp.sum(weight).astype(jnp.float32),
                "confusion": confusion(pred, jnp.where(weight, mask, 0), weight,
                                       self.num_classes),
                "count": jnp.sum(batch["valid"]).astype(jnp.float32)}

    def train_summary(self, sums):
        return {"pixel_accuracy": float(sums["pixels_correct"]) / max(float(sums["pixels"]), 1)}

    def summary(self, sums):
        _, miou, acc = iou_from_confusion(sums["confusion"])
        return {"val_loss": float(sums["loss_sum"]) / max(float(sums["pixels"]), 1.0),
                "val_miou": miou, "val_pixel_acc": acc, "val_count": int(sums["count"])}

    def details(self, sums, class_names) -> dict:
        """Per-class IoU; None for a class absent from both truth and prediction."""
        iou, _, _ = iou_from_confusion(sums["confusion"])
        return {"val_iou_per_class": {name: (None if np.isnan(v) else float(v))
                                      for name, v in zip(class_names, iou)}}

    def lr_multipliers(self, params):
        """torchvision's reference trains the aux head (``aux_classifier``: torch's
        ``aux_classifier.*`` tensors) at 10x the lr."""
        from jaxvision.models._stages import param_paths

        paths = param_paths(params)
        aux = [p for p in jax.tree.leaves(paths) if p.startswith("aux_classifier")]
        if not aux or self.aux_lr_mult == 1.0:
            return None
        return jax.tree.map(lambda p: self.aux_lr_mult if p.startswith("aux_classifier") else 1.0,
                            paths)

    def draw(self, images, batch, outputs, class_names):
        """Image | ground truth | prediction, masks in the VOC palette (ignore in white)."""
        pred = np.asarray(split_outputs(outputs)[0]).argmax(-1)
        tiles = []
        for img, truth, p in zip(images, np.asarray(batch["mask"]), pred):
            row = [img, colorize(truth), colorize(p)]
            tiles.append(np.concatenate([_fit(t, 96) for t in row], 1))
        return tiles

    def predict(self, model, variables, paths, data, out_dir="predictions", conv_lowering=None,
                **_):
        """Writes ``<out_dir>/<name>.png`` per image: the prediction blended over the image,
        a legend of the classes present beside it. Returns a line per image."""
        import os

        from jaxvision.data.transforms import resize_shorter
        from jaxvision.layers.normalize import normalize

        outs = output_paths(paths, out_dir)
        os.makedirs(out_dir, exist_ok=True)
        names, lines = data.class_names, []
        fwd = lowering.jit(lambda v, x: split_outputs(model.apply(
            v, normalize(x, data.mean, data.std), train=False))[0].argmax(-1), conv_lowering)
        for path, out in zip(paths, outs):
            img = read_image(path)
            x = np.asarray(resize_shorter(img, data.resize_size, data.cfg.interpolation))[None]
            pred = np.asarray(fwd(variables, x))[0].astype(np.uint8)
            # back to the image's own size, nearest as every mask resize
            pred = np.asarray(Image.fromarray(pred).resize(img.size, Image.NEAREST))
            overlay(np.asarray(img), pred, names).save(out)
            present = np.bincount(pred.ravel(), minlength=len(names)) / pred.size
            lines.append(f"{path} -> {out}: " + ", ".join(
                f"{names[c]} {present[c]:.0%}" for c in np.argsort(-present) if present[c] > 0))
        return lines


def colorize(mask) -> np.ndarray:
    m = np.asarray(mask).astype(np.int64)
    rgb = PALETTE[np.clip(m, 0, 255)]
    rgb[m == IGNORE] = 255
    return rgb


def _fit(img, size):
    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))


def overlay(image, mask, class_names, alpha: float = 0.5) -> Image.Image:
    """The mask blended over the image, with a legend of the classes it holds."""
    blend = (image * (1 - alpha) + colorize(mask) * alpha).astype(np.uint8)
    present = [int(c) for c in np.unique(mask) if c < len(class_names)]
    h, w = blend.shape[:2]
    legend_w, row = 140, 16
    canvas = Image.new("RGB", (w + legend_w, max(h, row * len(present) + 4)), "white")
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, c in enumerate(present):
        y = 2 + i * row
        draw.rectangle((w + 4, y, w + 16, y + 12), fill=tuple(int(v) for v in PALETTE[c]),
                       outline="black")
        draw.text((w + 20, y), class_names[c], fill="black")
    return canvas
