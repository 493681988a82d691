"""Detection: the engine's task (loss dict of the detector, COCO box AP over the whole split,
boxes drawn on pictures) and ``predict``, from images to torchvision-style detections."""
from __future__ import annotations

import inspect
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from jaxvision.layers import lowering
from jaxvision.models.detection import transform
from jaxvision.ops.resize import to_original_pixels
from jaxvision.registry import spec_or_default
from jaxvision.tasks import instance
from jaxvision.tasks.base import Task, output_paths, read_image

AP_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
BOX_FIELDS = ("boxes", "scores", "labels", "iscrowd")  # what per-class box AP reads


def gt_valid(batch):
    """(N, M) bool: which of the padded ground-truth rows are real."""
    return jnp.arange(batch["boxes"].shape[1])[None] < batch["num_boxes"][:, None]


def loss_image_sizes(model, batch) -> dict:
    """``image_sizes`` for a detector whose loss takes them: the R-CNNs clip their training
    proposals to each image's size, as torchvision does; a one-stage loss has no use for them."""
    takes = "image_sizes" in inspect.signature(type(model).loss).parameters
    return {"image_sizes": batch["image_size"]} if takes else {}


class Detection(Task):
    name = "detection"
    data_task = "detection"
    best_metric = "val_ap"
    best_mode = "max"
    meta_keys = ("model", "num_classes", "task")
    model_families = ("fpn_detector", "faster_rcnn", "ssd", "yolo", "efficientdet",
                      *instance.BRANCHES)

    def __init__(self, num_classes: int, draw_score: float = 0.3, branch: str | None = None):
        self.num_classes, self.draw_score = int(num_classes), float(draw_score)
        # "masks" (Mask R-CNN) or "keypoints" (Keypoint R-CNN): trained and evaluated too
        self.branch = branch

    @classmethod
    def check_config(cls, config) -> None:
        instance.check_data(config, instance.branch_of(config.model.name))

    @classmethod
    def from_config(cls, config, num_classes):
        cls.check_config(config)
        return cls(num_classes, branch=instance.branch_of(config.model.name))

    @classmethod
    def train_transform(cls, data):
        from jaxvision.data.det_transforms import DetTrainTransform
        from jaxvision.data.errors import DataError
        from jaxvision.data.instance_ops import COCO_KEYPOINT_FLIP

        c = data.cfg
        d = c.detection
        k = getattr(data.train_source, "num_keypoints", None) if d.keypoints else None
        if d.hflip and k not in (None, len(COCO_KEYPOINT_FLIP)):  # which is whose mirror?
            raise DataError(f"data.detection.hflip with {k} keypoints per instance: the "
                            f"flip knows COCO's {len(COCO_KEYPOINT_FLIP)} person keypoints "
                            "only; set data.detection.hflip=False")
        return DetTrainTransform(*detection_sizes(c), tuple(d.scale_range), d.hflip,
                                 d.max_boxes, interpolation=c.interpolation)

    @classmethod
    def eval_transform(cls, data):
        from jaxvision.data.det_transforms import DetEvalTransform

        c = data.cfg
        # every box of the split: max_boxes caps what training matches, not the truth
        most, crowd = (_most(data.val_source, m) for m in ("box_counts", "crowd_counts"))
        return DetEvalTransform(*detection_sizes(c), max(c.detection.max_boxes, most),
                                c.interpolation, max(1, crowd))

    @classmethod
    def check_targets(cls, data, log) -> None:
        """One line saying how many boxes ``data.detection.max_boxes`` drops from training."""
        counts = _box_counts(data.train_source)
        cap = data.cfg.detection.max_boxes
        if counts is not None and (counts > cap).any():
            more = counts > cap
            log(f"data.detection.max_boxes={cap}: training keeps the first {cap} boxes of an "
                f"image and drops {int((counts[more] - cap).sum())} of the "
                f"{int(counts.sum())} boxes, from {int(more.sum())} of the {len(counts)} train "
                f"images (up to {int(counts.max())} boxes); evaluation sees every box")

    @classmethod
    def best_for(cls, config) -> str:
        """Mask AP picks a Mask R-CNN's best checkpoint, keypoint AP a Keypoint R-CNN's."""
        branch = instance.branch_of(config.model.name)
        return instance.BEST[branch] if branch else cls.best_metric

    def branch_call(self, model, batch, train: bool, apply_kwargs: dict):
        """(model, apply kwargs) with the mask / keypoint branch's part: its ground truth to the
        loss; in eval, a Mask R-CNN's unpasted masks (the host pastes them)."""
        if train:
            return model, {**apply_kwargs, **instance.train_targets(self.branch, batch)}
        return instance.eval_model(model), apply_kwargs

    def forward(self, model, variables, batch, train: bool, **apply_kwargs):
        """Train: the detector's loss dict on the padded targets; eval: its padded detections
        clipped to each image's resized size."""
        model, apply_kwargs = self.branch_call(model, batch, train, apply_kwargs)
        if train:
            return model.apply(variables, batch["image"], batch["boxes"], batch["classes"],
                               gt_valid(batch), train=True, method="loss",
                               **loss_image_sizes(model, batch), **apply_kwargs)
        return model.apply(variables, batch["image"], train=False,
                           image_sizes=batch["image_size"], **apply_kwargs)

    def loss(self, outputs, batch):
        n = jnp.float32(batch["image"].shape[0])
        total = sum(outputs.values())
        return total, {f"{k}_sum": v * n for k, v in outputs.items()}

    def eval_sums(self, outputs, batch):
        """Not sums: every image's detections and ground truth, gathered on the host by
        ``accumulate`` for COCO evaluation (with the crowd regions, where the data keeps them)."""
        crowd = {k: batch[k] for k in ("crowd_boxes", "crowd_classes", "num_crowd") if k in batch}
        return {"det_boxes": outputs["boxes"], "det_scores": outputs["scores"],
                "det_labels": outputs["labels"], "det_count": outputs["count"],
                "gt_boxes": batch["boxes"], "gt_classes": batch["classes"],
                "gt_count": batch["num_boxes"], "scale": batch["scale"],
                "valid": batch["valid"], **crowd,
                **instance.eval_sums(self.branch, outputs, batch)}

    def accumulate(self, total, sums):
        """Per real image: detections and ground truth in the original image's pixels; crowd
        regions join the ground truth as COCO's ignore regions (``iscrowd`` 1)."""
        s = jax.device_get(sums)
        total = total if total is not None else {"gts": [], "dets": []}
        for i in np.nonzero(np.asarray(s["valid"]))[0]:
            n, m = int(s["det_count"][i]), int(s["gt_count"][i])
            scale = s["scale"][i]
            det = {"boxes": to_original_pixels(s["det_boxes"][i, :n], scale),
                   "scores": np.asarray(s["det_scores"][i, :n]),
                   "labels": np.asarray(s["det_labels"][i, :n])}
            gt = {"boxes": to_original_pixels(s["gt_boxes"][i, :m], scale),
                  "labels": np.asarray(s["gt_classes"][i, :m])}
            c = int(s["num_crowd"][i]) if "num_crowd" in s else 0
            if "num_crowd" in s:
                gt = {"boxes": np.concatenate(
                          [gt["boxes"], to_original_pixels(s["crowd_boxes"][i, :c], scale)]),
                      "labels": np.concatenate([gt["labels"], s["crowd_classes"][i, :c]]),
                      "iscrowd": np.repeat([0, 1], [m, c])}
            instance.add_predictions(self.branch, s, i, n, det, gt, c)
            total["dets"].append(det)
            total["gts"].append(gt)
        return total

    def train_summary(self, sums):
        count = max(float(sums["count"]), 1.0)
        return {k[:-4]: float(v) / count for k, v in sums.items()
                if k.endswith("_sum") and k != "loss_sum"}

    def summary(self, total):
        from jaxvision.tasks.coco_eval import coco_metrics

        if self.branch:  # box AP beside mask (keypoint) AP
            return {**instance.summary(self.branch, total["gts"], total["dets"]),
                    "val_count": len(total["gts"])}
        ap = coco_metrics(total["gts"], total["dets"])
        return {**{f"val_{k}": float(ap[k]) for k in AP_KEYS}, "val_count": len(total["gts"])}

    def details(self, total, class_names) -> dict:
        from jaxvision.tasks.coco_eval import coco_metrics

        per_class = {}
        for c, name in enumerate(class_names):
            if any(np.any(g["labels"] == c) for g in total["gts"]):
                pick = lambda d: {k: v[d["labels"] == c] for k, v in d.items()
                                  if k in BOX_FIELDS}
                ap = coco_metrics([pick(g) for g in total["gts"]],
                                  [pick(d) for d in total["dets"]])
                per_class[name] = float(ap["ap"])
        return {"val_ap_per_class": per_class}

    def draw(self, images, batch, outputs, class_names):
        """Each image with its ground truth (green) and the detections scoring at least
        ``draw_score`` (red, with class name and score); a Mask R-CNN's tile is the ground
        truth's masks beside the predicted ones."""
        tiles = []
        for i, img in enumerate(images):
            m, n = int(batch["num_boxes"][i]), int(outputs["count"][i])
            boxes, labels, scores = (np.asarray(outputs[k][i, :n])
                                     for k in ("boxes", "labels", "scores"))
            truth = np.asarray(batch["boxes"][i, :m])
            if self.branch == "masks":
                masks = instance.paste_original(outputs["mask_probs"][i], boxes, img.shape[:2])
                pic = draw_instances(img, boxes, labels, scores, masks, class_names,
                                     self.draw_score)
                gt = draw_instances(img, [], batch["classes"][i, :m], np.ones(m),
                                    batch["masks"][i, :m], class_names, truth=truth)
                pic = Image.fromarray(np.concatenate([np.asarray(gt), np.asarray(pic)], 1))
            else:
                pic = draw_boxes(img, boxes, labels, scores, class_names, self.draw_score,
                                 truth=truth)
            tiles.append(np.asarray(pic.resize((128 * pic.width // pic.height, 128),
                                               Image.BILINEAR)) if
                         pic.height < 128 else np.asarray(pic))
        return tiles

    def predict(self, model, variables, paths, data, out_dir="predictions", conv_lowering=None,
                **_):
        """Writes ``<out_dir>/<name>.png`` per image with its detections drawn; a line per
        image lists them (class, score, box in the image's pixels)."""
        from jaxvision.layers.normalize import normalize_batch

        outs = output_paths(paths, out_dir)
        os.makedirs(out_dir, exist_ok=True)
        prep = data.eval_transform()
        norm = (data.mean, data.std)
        fwd = lowering.jit(lambda v, b: self.forward(model, v, normalize_batch(b, norm), False),
                           conv_lowering)
        lines = []
        for path, dst in zip(paths, outs):
            img = np.asarray(read_image(path))
            ex = prep.map({"image": img, "boxes": np.zeros((0, 4), np.float32),
                           "classes": np.zeros((0,), np.int32), "num_boxes": 0})
            out = jax.device_get(fwd(variables, {k: np.asarray(v)[None] for k, v in ex.items()}))
            n = int(out["count"][0])
            boxes = to_original_pixels(out["boxes"][0, :n], ex["scale"])
            labels, scores = np.asarray(out["labels"][0, :n]), np.asarray(out["scores"][0, :n])
            keep = scores >= self.draw_score
            if self.branch == "masks":  # translucent masks under the boxes
                masks = instance.paste_original(out["mask_probs"][0], boxes, img.shape[:2])
                pic = draw_instances(img, boxes, labels, scores, masks, data.class_names,
                                     self.draw_score)
            else:
                pic = draw_boxes(img, boxes, labels, scores, data.class_names, self.draw_score)
            pic.save(dst)
            found = ", ".join(f"{_name(data.class_names, c)} {s:.2f} "
                              f"[{', '.join(f'{v:.0f}' for v in b)}]"
                              for b, c, s in zip(boxes[keep], labels[keep], scores[keep]))
            lines.append(f"{path} -> {dst}: {found or 'nothing above ' + str(self.draw_score)}")
        return lines


def detection_sizes(cfg) -> tuple[int, int, int]:
    """(min_size, max_size, canvas) of a detection run's data config (see data.detection)."""
    from jaxvision.data.errors import DataError

    d, min_size = cfg.detection, cfg.image_size
    max_size = d.max_size or int(round(min_size * 1333 / 800))
    canvas = d.canvas or -(-max_size // 32) * 32
    if canvas < max_size:
        raise DataError(f"data.detection.canvas {canvas} is smaller than max_size "
                        f"{max_size}: an eval image would not fit")
    return min_size, max_size, canvas


def _box_counts(source, method="box_counts"):
    """Each example's box (or crowd region) count where the source knows it without reading
    images, else None."""
    counts = getattr(source, method, None)
    return None if counts is None else np.asarray(counts())


def _most(source, method) -> int:
    counts = _box_counts(source, method)
    return int(counts.max()) if counts is not None and len(counts) else 0


def _name(class_names, c) -> str:
    return class_names[c] if 0 <= c < len(class_names) else str(int(c))


def _colour(c: int) -> tuple:
    from jaxvision.tasks.segmentation import PALETTE

    return tuple(int(v) for v in PALETTE[1 + c % 254])


def draw_boxes(image, boxes, labels, scores, class_names, min_score=0.0, truth=None):
    """A PIL picture of ``image`` (HWC uint8) with ``truth`` boxes in green and the detections
    scoring at least ``min_score`` in their class colour, labelled ``name score``."""
    pic = Image.fromarray(np.asarray(image, np.uint8))
    draw = ImageDraw.Draw(pic)
    for b in [] if truth is None else truth:
        draw.rectangle([float(v) for v in b], outline=(0, 255, 0))
    for b, c, s in zip(boxes, labels, scores):
        if s < min_score:
            continue
        colour = _colour(int(c))
        x1, y1 = float(b[0]), float(b[1])
        draw.rectangle([float(v) for v in b], outline=colour, width=2)
        draw.text((x1 + 2, max(y1 - 11, 0)), f"{_name(class_names, c)} {s:.2f}", fill=colour)
    return pic


def draw_instances(image, boxes, labels, scores, masks, class_names, min_score=0.0,
                   truth=None):
    """``draw_boxes`` over the instance ``masks`` (n, H, W) scoring at least ``min_score``,
    tinted translucently in their class colour."""
    keep = np.asarray(scores) >= min_score
    tinted = instance.overlay(Image.fromarray(np.asarray(image, np.uint8)),
                              np.asarray(masks)[keep],
                              [_colour(int(c)) for c in np.asarray(labels)[keep]])
    return draw_boxes(tinted, boxes, labels, scores, class_names, min_score, truth)


def predict(model, variables, images: Sequence[np.ndarray], name: str | None = None,
            batch_size: int = 8) -> list[dict]:
    """What torchvision's detector returns in eval mode for ``images`` (HWC float32 in [0, 1],
    any sizes): per image numpy ``boxes`` (n, 4) xyxy in that image's pixels, ``scores`` (n,),
    ``labels`` (n,).  The preprocessing is the model's own (``model.preprocessing``, as
    torchvision's ``model.transform``); ``name`` is only read for a module that carries none
    (the registered mean/std and SSD's fixed size, sizes from ``model.min_size``/``max_size``)."""
    pre = preprocessing_of(model, name)
    apply = lowering.jit(lambda v, x, s: model.apply(v, x, image_sizes=s))
    results = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        batch, sizes = pre.prepare(chunk)
        dets = jax.device_get(apply(variables, batch, sizes))
        results += transform.to_original(dets, sizes, [np.shape(im)[:2] for im in chunk])
    return results


def preprocessing_of(model, name: str | None = None) -> transform.Preprocessing:
    """``model.preprocessing``, or for a module without one what the registry knows of
    ``name`` (ImageNet mean/std without a name)."""
    own = getattr(model, "preprocessing", None)
    if own is not None:
        return own
    spec = spec_or_default(name)
    fixed = tuple(spec.input_size) if spec.family == "ssd" else None
    return transform.Preprocessing(spec.mean, spec.std, getattr(model, "min_size", 800),
                                   getattr(model, "max_size", 1333), fixed, 1 if fixed else 32)
