"""COCO box AP of host-side predictions, computed by pycocotools' own ``COCOeval``.

``gts`` and ``dets`` are lists with one entry per image (the same order); boxes are xyxy in
absolute pixels:

    gts[i]  = {"boxes": (n, 4), "labels": (n,)}   optional "areas" (n,), "iscrowd" (n,)
    dets[i] = {"boxes": (m, 4), "scores": (m,), "labels": (m,)}

Every image is evaluated, also one with neither ground truth nor detections. COCOeval reports -1
for a metric it cannot compute (no ground truth in an area range, or none at all); this returns
NaN there instead, so that an average or a "best" comparison can never take -1 for a score.

Area ranges (small < 32^2 <= medium < 96^2 <= large) are judged on ``areas`` when given (COCO's
files hold the segmentation area) and on the box area otherwise, so ap_small/medium/large can
differ slightly from the official figures when the areas are not passed.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

# COCOeval.stats[0:6], the boxes' summary lines in the order summarize() prints them
KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _xywh(boxes, where):
    b = np.asarray(boxes, np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{where}: boxes of shape {b.shape}, expected (n, 4) xyxy")
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)


def _column(d, key, n, where, default=None):
    if key not in d:
        if default is None:
            raise ValueError(f"{where}: no {key!r} (keys: {sorted(d)})")
        return np.full(n, default)
    v = np.asarray(d[key]).reshape(-1)
    if len(v) != n:
        raise ValueError(f"{where}: {key!r} has {len(v)} entries for {n} boxes")
    return v


def _annotations(entries, kind):
    anns = []
    for i, d in enumerate(entries):
        where = f"{kind}[{i}]"
        box = _xywh(d.get("boxes", np.zeros((0, 4))), where)
        n = len(box)
        labels = _column(d, "labels", n, where)
        if kind == "dets":
            extra = {"score": _column(d, "scores", n, where)}
            area = box[:, 2] * box[:, 3]
            crowd = np.zeros(n)
        else:
            extra = {}
            area = _column(d, "areas", n, where, np.nan)
            area = np.where(np.isnan(area), box[:, 2] * box[:, 3], area)
            crowd = _column(d, "iscrowd", n, where, 0)
        for k in range(n):
            ann = {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(labels[k]),
                   "bbox": box[k].tolist(), "area": float(area[k]), "iscrowd": int(crowd[k])}
            anns.append(ann | {key: float(v[k]) for key, v in extra.items()})
    return anns


def _coco(images, categories, anns):
    from pycocotools.coco import COCO

    c = COCO()
    c.dataset = {"images": images, "categories": categories, "annotations": anns}
    c.createIndex()
    return c


def coco_metrics(gts, dets) -> dict:
    """{ap, ap50, ap75, ap_small, ap_medium, ap_large} of ``dets`` against ``gts`` (floats in
    [0, 1]; NaN where COCOeval has nothing to average). Labels are any integer ids; a label
    with no ground truth in any image adds nothing (as in COCOeval)."""
    from pycocotools.cocoeval import COCOeval

    if len(gts) != len(dets):
        raise ValueError(f"coco_metrics: {len(gts)} ground-truth entries but {len(dets)} "
                         "detection entries; expected one of each per image")
    gt_anns, dt_anns = _annotations(gts, "gts"), _annotations(dets, "dets")
    images = [{"id": i + 1} for i in range(len(gts))]
    cat_ids = sorted({a["category_id"] for a in gt_anns + dt_anns})
    categories = [{"id": c} for c in cat_ids]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints every step
        gt = _coco(images, categories, gt_anns)
        # what COCO.loadRes builds for boxes, which cannot take an empty list
        dt = _coco(images, categories, dt_anns)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = [im["id"] for im in images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats[:len(KEYS)]]
    return {k: (float("nan") if s < 0 else s) for k, s in zip(KEYS, stats)}
