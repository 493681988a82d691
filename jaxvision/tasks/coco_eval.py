"""COCO AP of host-side predictions — boxes, masks, keypoints — computed by pycocotools' own
``COCOeval`` (``iou_type`` "bbox", "segm" or "keypoints").

``gts`` and ``dets`` are lists with one entry per image (the same order); boxes are xyxy in
absolute pixels:

    gts[i]  = {"boxes": (n, 4), "labels": (n,)}   optional "areas" (n,), "iscrowd" (n,)
    dets[i] = {"boxes": (m, 4), "scores": (m,), "labels": (m,)}

and for masks (``segm``) each entry adds ``masks``: (n, H, W) in the image's pixels (nonzero,
or for float probabilities above 0.5, as torchvision's reference thresholds them), or a list of
pycocotools RLEs; for keypoints ``keypoints``: (n, K, 3) x, y, v (v > 0: labelled; a
detection's v is ignored). A crowd ground truth (``iscrowd`` 1) is COCO's ignore region: a
detection that matches it is neither a true nor a false positive, and it is no miss.

Every image is evaluated, also one with neither ground truth nor detections. COCOeval reports -1
for a metric it cannot compute (no ground truth in an area range, or none at all); this returns
NaN there instead, so that an average or a "best" comparison can never take -1 for a score.

Area ranges (small < 32^2 <= medium < 96^2 <= large) are judged on ``areas`` when given (COCO's
files hold the segmentation area), else on the mask's area where masks are given, else on the
box's, so ap_small/medium/large can differ slightly from the official figures when the areas are
not passed. A detection's area is pycocotools' ``loadRes``'s: the box's, the mask's, or the
extent of its keypoints.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

# COCOeval.stats[0:6], the boxes' (and masks') summary lines in the order summarize() prints them
KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
KP_KEYS = ("ap", "ap50", "ap75", "ap_medium", "ap_large")  # keypoints: stats[0:5]
IOU_TYPES = ("bbox", "segm", "keypoints")


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


def _rles(d, n, where):
    """(RLEs, (H, W) or None) of an entry's ``masks``."""
    from pycocotools import mask as coco_mask

    if "masks" not in d:
        raise ValueError(f"{where}: no 'masks' (keys: {sorted(d)}), needed for segm AP")
    masks = d["masks"]
    if isinstance(masks, (list, tuple)):  # RLEs already
        rles, hw = list(masks), None
        if rles:
            hw = tuple(rles[0]["size"])
    else:
        m = np.asarray(masks)
        if m.ndim != 3:
            raise ValueError(f"{where}: masks of shape {m.shape}, expected (n, H, W)")
        m = m > 0.5 if np.issubdtype(m.dtype, np.floating) else m != 0
        rles, hw = [coco_mask.encode(np.asfortranarray(k.astype(np.uint8))) for k in m], \
            m.shape[1:]
    if len(rles) != n:
        raise ValueError(f"{where}: 'masks' has {len(rles)} entries for {n} boxes")
    if any(tuple(r["size"]) != hw for r in rles):
        raise ValueError(f"{where}: masks of different sizes in one image")
    return rles, hw


def _keypoints(d, n, where):
    if "keypoints" not in d:
        raise ValueError(f"{where}: no 'keypoints' (keys: {sorted(d)}), needed for keypoint AP")
    k = np.asarray(d["keypoints"], np.float64)
    if k.ndim != 3 or k.shape[0] != n or k.shape[2] != 3:
        raise ValueError(f"{where}: keypoints of shape {k.shape}, expected ({n}, K, 3)")
    return k


def _annotations(entries, kind, iou_type):
    """COCO annotations of ``entries`` and each image's mask size (None where unknown)."""
    from pycocotools import mask as coco_mask

    anns, sizes = [], []
    for i, d in enumerate(entries):
        where = f"{kind}[{i}]"
        box = None
        if iou_type == "bbox" and "boxes" not in d:
            raise ValueError(f"{where}: no 'boxes' (keys: {sorted(d)}), needed for box AP")
        if "boxes" in d:
            box = _xywh(d["boxes"], where)
        n = len(box) if box is not None else np.size(d.get("labels", ()))
        labels = _column(d, "labels", n, where)
        rles, hw = _rles(d, n, where) if iou_type == "segm" else (None, None)
        kps = _keypoints(d, n, where) if iou_type == "keypoints" else None
        sizes.append(hw)
        if kind == "dets" and kps is not None:  # loadRes: the keypoints' extent
            lo, hi = kps[..., :2].min(1), kps[..., :2].max(1)
            box = np.concatenate([lo, hi - lo], 1).reshape(n, 4)
        elif box is None:
            box = (coco_mask.toBbox(rles).reshape(n, 4) if rles
                   else np.zeros((n, 4)))
        area = coco_mask.area(rles).astype(np.float64) if rles else box[:, 2] * box[:, 3]
        if kind == "dets":
            extra = {"score": _column(d, "scores", n, where)}
            crowd = np.zeros(n)
        else:
            extra = {}
            given = _column(d, "areas", n, where, np.nan)
            area = np.where(np.isnan(given), area, given)
            crowd = _column(d, "iscrowd", n, where, 0)
        for k in range(n):
            ann = {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(labels[k]),
                   "bbox": box[k].tolist(), "area": float(area[k]), "iscrowd": int(crowd[k])}
            if rles is not None:
                ann["segmentation"] = rles[k]
            if kps is not None:
                ann["keypoints"] = kps[k].reshape(-1).tolist()
                ann["num_keypoints"] = int((kps[k, :, 2] > 0).sum())
            anns.append(ann | {key: float(v[k]) for key, v in extra.items()})
    return anns, sizes


def _images(gt_sizes, dt_sizes):
    images = []
    for i, (g, d) in enumerate(zip(gt_sizes, dt_sizes)):
        if g is not None and d is not None and g != d:
            raise ValueError(f"image {i}: ground-truth masks are {g[0]}x{g[1]} but detected "
                             f"masks {d[0]}x{d[1]}; expected both in the image's pixels")
        hw = g or d
        images.append({"id": i + 1} | ({"height": hw[0], "width": hw[1]} if hw else {}))
    return images


def _coco(images, categories, anns):
    from pycocotools.coco import COCO

    c = COCO()
    c.dataset = {"images": images, "categories": categories, "annotations": anns}
    c.createIndex()
    return c


def coco_metrics(gts, dets, iou_type: str = "bbox", kpt_oks_sigmas=None) -> dict:
    """{ap, ap50, ap75, ap_small, ap_medium, ap_large} of ``dets`` against ``gts`` (floats in
    [0, 1]; NaN where COCOeval has nothing to average); keypoints give KP_KEYS (COCO has no
    small keypoint range). Labels are any integer ids; a label with no ground truth in any
    image adds nothing (as in COCOeval). ``kpt_oks_sigmas``: per-keypoint OKS sigmas, COCO's
    17 person ones by default."""
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise ValueError(f"coco_metrics: iou_type {iou_type!r}, expected one of {IOU_TYPES}")
    if len(gts) != len(dets):
        raise ValueError(f"coco_metrics: {len(gts)} ground-truth entries but {len(dets)} "
                         "detection entries; expected one of each per image")
    (gt_anns, gt_sizes), (dt_anns, dt_sizes) = (_annotations(gts, "gts", iou_type),
                                                _annotations(dets, "dets", iou_type))
    images = _images(gt_sizes, dt_sizes)
    cat_ids = sorted({a["category_id"] for a in gt_anns + dt_anns})
    categories = [{"id": c} for c in cat_ids]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints every step
        gt = _coco(images, categories, gt_anns)
        # what COCO.loadRes builds, which cannot take an empty list
        dt = _coco(images, categories, dt_anns)
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.params.imgIds = [im["id"] for im in images]
        if iou_type == "keypoints":
            _set_sigmas(ev.params, kpt_oks_sigmas, gt_anns + dt_anns)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    keys = KP_KEYS if iou_type == "keypoints" else KEYS
    stats = [float(s) for s in ev.stats[:len(keys)]]
    return {k: (float("nan") if s < 0 else s) for k, s in zip(keys, stats)}


def _set_sigmas(params, sigmas, anns):
    counts = {len(a["keypoints"]) // 3 for a in anns}
    if sigmas is not None:
        params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
    k = len(params.kpt_oks_sigmas)
    if counts - {k}:
        raise ValueError(f"coco_metrics: keypoints of {sorted(counts)} points, but "
                         f"{k} OKS sigmas (pass kpt_oks_sigmas for a layout other than COCO's "
                         "17 person keypoints)")


def instance_metrics(gts, dets, masks: bool = True, keypoints: bool = False) -> dict:
    """Box AP (KEYS) beside mask AP (``mask_`` + KEYS) and keypoint AP (``kp_`` + KP_KEYS),
    each over the whole split: what an instance-segmentation or keypoint task reports (with
    ``val_`` in front: val_ap, val_mask_ap, val_mask_ap50, val_mask_ap75, val_kp_ap). Where
    masks are given, a ground truth's area is its mask's (as COCO's files hold it) for every
    kind of AP, and each mask is encoded once."""
    if masks:
        from pycocotools import mask as coco_mask

        gts, dets = ([_with_rles(d, f"{kind}[{i}]") for i, d in enumerate(entries)]
                     for kind, entries in (("gts", gts), ("dets", dets)))
        gts = [g if "areas" in g else g | {"areas": coco_mask.area(g["masks"])} for g in gts]
    out = coco_metrics(gts, dets)
    if masks:
        out |= {f"mask_{k}": v for k, v in coco_metrics(gts, dets, "segm").items()}
    if keypoints:
        out |= {f"kp_{k}": v for k, v in coco_metrics(gts, dets, "keypoints").items()}
    return out


def _with_rles(d, where):
    n = len(d["boxes"]) if "boxes" in d else np.size(d.get("labels", ()))
    return d | {"masks": _rles(d, n, where)[0]}
