"""COCO-format detection data: an ``instances_*.json`` file and its image folder.

Read as torchvision's detection reference reads it: crowd annotations are no targets,
``[x, y, w, h]`` turned into xyxy, clamped to the image, and boxes left with no width or height
dropped (``ConvertCocoPolysToMask``). Labels are the category ids themselves (torchvision's 91-class
COCO layout, 0 = background) unless ``contiguous=True`` numbers the categories 1..K.

Opt-in, for instance segmentation and keypoints: ``masks=True`` adds each instance's mask
(polygons or RLE, decoded by pycocotools when an example is read), ``keypoints=True`` its
keypoints (K x (x, y, v), K from the categories' ``keypoints`` names, COCO's 17 for people),
and ``crowd=True`` keeps the crowd regions apart (``crowd_boxes``, ``crowd_classes``,
``num_crowd``, with ``crowd_masks``), so evaluation can ignore the detections that fall on them
as COCO does, instead of counting them as false positives.

The whole file is checked when the source is built, in one pass over the annotations, so a bad
file fails before training starts rather than at the batch that reaches it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
from PIL import Image

from jaxvision.data.errors import DataError, require_root
from jaxvision.data.transforms import to_rgb

_KEYS = ("images", "annotations", "categories")


def _load(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such COCO annotation file")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a COCO annotation file: not JSON ({e})") from None
    missing = [k for k in _KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path}: not a COCO annotation file: no {missing} key(s) (expected a "
                        f"JSON object with {list(_KEYS)}, as instances_*.json)")
    for k in _KEYS:
        if not isinstance(data[k], list):
            raise DataError(f"{path}: '{k}' is a {type(data[k]).__name__}, expected a list")
    return data


def _coco_index(data: dict):
    from pycocotools.coco import COCO

    coco = COCO()  # no file: pycocotools would read and parse it again
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
        coco.createIndex()
    return coco


def _fields(path, kind, entry, keys, i):
    try:
        return [entry[k] for k in keys]
    except (KeyError, TypeError):
        raise DataError(f"{path}: {kind} #{i} ({str(entry)[:80]}) lacks one of the keys "
                        f"{list(keys)}") from None


def _first(path, bad, what, ann_ids, image_ids):
    """One error for every annotation flagged in ``bad``: the first named, the rest counted."""
    if bad.any():
        i = int(np.argmax(bad))
        more = f" (and {int(bad.sum()) - 1} more)" if bad.sum() > 1 else ""
        raise DataError(f"{path}: annotation id {ann_ids[i]} of image id {image_ids[i]}: "
                        f"{what(i)}{more}")


def _xywh(path, rows, ann_ids):
    try:
        return np.array([r[3] for r in rows], np.float64).reshape(len(rows), 4)
    except (ValueError, TypeError):
        i = next(i for i, r in enumerate(rows) if np.shape(r[3]) != (4,)
                 or not all(isinstance(v, (int, float)) for v in r[3]))
        raise DataError(f"{path}: annotation id {ann_ids[i]}: bbox {rows[i][3]!r}, expected "
                        "[x, y, width, height]") from None


def _checked_xyxy(path, xywh, size, files, ann_ids, img_of, tol):
    """xyxy boxes, or one DataError for the first box that is no box or leaves its image."""
    _first(path, ~np.isfinite(xywh).all(1) | (xywh[:, 2] < 0) | (xywh[:, 3] < 0),
           lambda i: f"bbox {xywh[i].tolist()} has a negative or non-finite value", ann_ids,
           img_of)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    outside = ((xyxy[:, :2] < -tol).any(1) | (xyxy[:, 2] > size[:, 0] + tol)
               | (xyxy[:, 3] > size[:, 1] + tol))
    _first(path, outside, lambda i: (
        f"box xyxy {xyxy[i].round(2).tolist()} lies outside its image {files[i]} "
        f"({size[i, 0]:g}x{size[i, 1]:g}) by more than {tol:g} px"), ann_ids, img_of)
    return xyxy


def _class_names(coco, contiguous):
    cats = {c: coco.cats[c].get("name", str(c)) for c in sorted(coco.cats)}
    if contiguous:
        return ["__background__"] + list(cats.values()), {c: i + 1 for i, c in enumerate(cats)}
    top = max(cats, default=0)
    names = ["__background__"] + ["N/A"] * top
    for c, name in cats.items():
        names[c] = name
    return names, {c: c for c in cats}


def _check_segmentation(path, ann, size):
    """A DataError unless ``ann['segmentation']`` is polygons of 3+ points or an RLE of its
    image's size ``(w, h)``."""
    seg, where = ann.get("segmentation"), f"{path}: annotation id {ann['id']} of image id " \
        f"{ann['image_id']}"
    if isinstance(seg, list):
        if not seg:
            raise DataError(f"{where}: 'segmentation' is an empty list, expected polygons")
        for k, poly in enumerate(seg):
            # pycocotools would take a 4-number polygon for a box, and fail on fewer
            if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                    or not all(isinstance(v, (int, float)) for v in poly)):
                got = f"{len(poly)} numbers" if isinstance(poly, list) else repr(poly)[:40]
                raise DataError(f"{where}: polygon #{k} has {got}, expected a flat list "
                                "[x1, y1, x2, y2, ...] of at least 3 points")
        return
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        w, h = size
        if list(seg["size"]) != [h, w]:
            raise DataError(f"{where}: RLE of size {list(seg['size'])}, but its image is "
                            f"[{h:g}, {w:g}] ([height, width])")
        return
    raise DataError(f"{where}: 'segmentation' is {repr(seg)[:60]}, expected polygons (a list "
                    "of [x1, y1, ...]) or an RLE {'size': [h, w], 'counts': ...}")


def _num_keypoints(path, data) -> int:
    """K: the length of the categories' ``keypoints`` names (one K for the whole file: a
    batch holds one shape), COCO's 17 where no category names them."""
    counts = {len(c["keypoints"]) for c in data["categories"] if c.get("keypoints")}
    if len(counts) > 1:
        raise DataError(f"{path}: categories name {sorted(counts)} keypoints; expected one "
                        "count for the whole file")
    return counts.pop() if counts else 17


def _read_keypoints(path, anns, k):
    """(n, K, 3) float32; an annotation without keypoints has none labelled (all zeros)."""
    out = np.zeros((len(anns), k, 3), np.float32)
    for i, a in enumerate(anns):
        kp = a.get("keypoints")
        if kp is None:
            continue
        if (not isinstance(kp, list) or len(kp) != 3 * k
                or not all(isinstance(v, (int, float)) for v in kp)):
            got = f"of length {len(kp)}" if isinstance(kp, list) else repr(kp)[:40]
            raise DataError(f"{path}: annotation id {a['id']} of image id {a['image_id']}: "
                            f"keypoints {got}, expected {3 * k} numbers ({k} x (x, y, v))")
        out[i] = np.reshape(kp, (k, 3))
    return out


def _to_rle(seg, h, w):
    """One pycocotools RLE of polygons / an RLE, as ``COCO.annToRLE``."""
    from pycocotools import mask as coco_mask

    if isinstance(seg, list):  # polygons: one object may have several parts
        return coco_mask.merge(coco_mask.frPyObjects(seg, h, w))
    if isinstance(seg["counts"], list):  # uncompressed RLE
        return coco_mask.frPyObjects(seg, h, w)
    return seg


def _decode(segms, h, w) -> np.ndarray:
    """(n, h, w) uint8 masks of polygons / RLEs, as pycocotools' ``COCO.annToMask``."""
    from pycocotools import mask as coco_mask

    if not segms:
        return np.zeros((0, h, w), np.uint8)
    rles = [_to_rle(seg, h, w) for seg in segms]
    return np.ascontiguousarray(np.moveaxis(coco_mask.decode(rles), -1, 0))


def _group(sel, owner, n):
    """``sel`` sorted by image (file order within one) and each image's slice start."""
    sel = sel[np.argsort(owner[sel], kind="stable")]
    return sel, np.searchsorted(owner[sel], np.arange(n + 1))


class CocoSource:
    """A grain random-access source over a COCO-format file: ``[i]`` -> ``{"image" (H, W, 3)
    uint8, "boxes" (n, 4) float32 xyxy pixels, "classes" (n,) int32, "num_boxes" int32}``,
    images in ascending id order (``image_ids[i]`` is example ``i``'s COCO id).

    ``skip_empty``: leave out images with no annotation of width and height above 1 px, as
    torchvision's reference does for training (crowd annotations count there, as in the
    reference). ``box_tolerance``: how far (px) a box may reach past its image before the file
    is refused; COCO's own boxes overshoot by fractions of a pixel.

    ``masks``: add ``masks`` (n, H, W) uint8; ``keypoints``: add ``keypoints`` (n, K, 3)
    float32; ``crowd``: add the crowd regions (see the module's note).
    """

    def __init__(self, annotation_file: str, image_dir: str, skip_empty: bool = False,
                 contiguous: bool = False, box_tolerance: float = 1.0, masks: bool = False,
                 keypoints: bool = False, crowd: bool = False):
        self.annotation_file, self.image_dir = annotation_file, image_dir
        self.skip_empty, self.contiguous = bool(skip_empty), bool(contiguous)
        self.masks, self.keypoints, self.crowd = bool(masks), bool(keypoints), bool(crowd)
        path = annotation_file
        data = _load(path)
        for i, c in enumerate(data["categories"]):
            (cid,) = _fields(path, "category", c, ("id",), i)
            if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
                raise DataError(f"{path}: category #{i} has id {cid!r}, expected an integer >= 0")
        coco = _coco_index(data)
        self.class_names, label_of = _class_names(coco, self.contiguous)

        images = {}
        for i, im in enumerate(data["images"]):
            iid, name, w, h = _fields(path, "image", im, ("id", "file_name", "width", "height"), i)
            if iid in images:
                raise DataError(f"{path}: image id {iid} is listed twice")
            if not all(isinstance(v, (int, float)) and v > 0 for v in (w, h)):
                raise DataError(f"{path}: image id {iid} has width {w!r}, height {h!r}; "
                                "expected positive numbers")
            images[iid] = (name, float(w), float(h))
        anns = data["annotations"]
        self.num_annotations = len(anns)
        rows = [_fields(path, "annotation", a, ("id", "image_id", "category_id", "bbox"), i)
                for i, a in enumerate(anns)]
        ann_ids = [r[0] for r in rows]
        img_of = [r[1] for r in rows]
        for i, iid in enumerate(img_of):
            if iid not in images:
                raise DataError(f"{path}: annotation id {ann_ids[i]} refers to image id {iid}, "
                                "which 'images' does not list")
        for i, r in enumerate(rows):
            if r[2] not in label_of:
                raise DataError(f"{path}: annotation id {ann_ids[i]} has category_id {r[2]}, "
                                f"not one of the file's categories {sorted(label_of)}")
        xywh = _xywh(path, rows, ann_ids)
        size = np.array([images[iid][1:] for iid in img_of], np.float64).reshape(-1, 2)
        xyxy = _checked_xyxy(path, xywh, size, [images[i][0] for i in img_of], ann_ids, img_of,
                             box_tolerance)

        # torchvision's reference: crowd regions are not targets (``crowd`` keeps them apart);
        # clamp, keep x2 > x1, y2 > y1
        xyxy[:, 0::2] = np.clip(xyxy[:, 0::2], 0, size[:, :1])
        xyxy[:, 1::2] = np.clip(xyxy[:, 1::2], 0, size[:, 1:])
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        keep = ~crowd & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        # torchvision's _coco_remove_images_without_annotations: some box over 1 px both ways
        big = np.flatnonzero((xywh[:, 2] > 1) & (xywh[:, 3] > 1))
        has_box = {img_of[i] for i in big}
        ids = sorted(iid for iid in images if not self.skip_empty or iid in has_box)

        # per image: a slice of one array (cheap to pickle into grain's workers)
        pos = {iid: k for k, iid in enumerate(ids)}
        owner = np.array([pos.get(iid, -1) for iid in img_of], np.int64)
        sel, self._start = _group(np.flatnonzero(keep & (owner >= 0)), owner, len(ids))
        # COCO's own area (the segment's), else the box's: what evaluation ranks by size
        areas = np.array([a.get("area", w * h) for a, (_, _, w, h) in zip(anns, xywh)],
                         np.float64).reshape(-1)
        self._boxes = xyxy[sel].astype(np.float32)
        self._classes = np.array([label_of[rows[i][2]] for i in sel], np.int32)
        self._areas = areas[sel]
        cut, self._crowd_start = _group(np.flatnonzero(crowd & (owner >= 0)), owner, len(ids))
        if self.crowd:
            self._crowd_boxes = xyxy[cut].astype(np.float32)
            self._crowd_classes = np.array([label_of[rows[i][2]] for i in cut], np.int32)
            self._crowd_areas = areas[cut]
        if self.masks:
            for i in np.concatenate([sel, cut if self.crowd else sel[:0]]):
                _check_segmentation(path, anns[i], size[i])
            self._segms = [anns[i]["segmentation"] for i in sel]
            self._crowd_segms = [anns[i]["segmentation"] for i in cut] if self.crowd else []
        if self.keypoints:
            self.num_keypoints = _num_keypoints(path, data)
            self._keypoints = _read_keypoints(path, [anns[i] for i in sel], self.num_keypoints)
        self.image_ids = ids
        self.files = [os.path.join(image_dir, images[iid][0]) for iid in ids]
        self._sizes = [images[iid][1:] for iid in ids]
        missing = [f for f in self.files if not os.path.isfile(f)]
        if missing:
            raise DataError(f"{path}: {len(missing)} of its {len(ids)} images are not in "
                            f"{image_dir}: {missing[:3]}{' ...' if len(missing) > 3 else ''}")

    def box_counts(self) -> np.ndarray:
        """The number of boxes of each example, without reading an image."""
        return np.diff(self._start)

    def eval_targets(self, index) -> dict:
        """Example ``index``'s ground truth as COCO evaluates it, in the original image's pixels
        (a ``coco_eval`` entry; no image is read): ``boxes``, ``labels``, ``areas`` (the
        file's), ``iscrowd`` (the crowd regions last, where ``crowd``), with ``masks`` as
        pycocotools RLEs where ``masks`` and ``keypoints`` where ``keypoints`` (crowd regions:
        none labelled)."""
        a, b = self._start[index], self._start[index + 1]
        c, d = (self._crowd_start[index], self._crowd_start[index + 1]) if self.crowd else (0, 0)

        def rows(name):
            own = getattr(self, "_" + name)[a:b]
            return np.concatenate([own, getattr(self, "_crowd_" + name)[c:d]]) if d > c else \
                own.copy()

        out = {"boxes": rows("boxes"), "labels": rows("classes"), "areas": rows("areas"),
               "iscrowd": np.repeat([0, 1], [b - a, d - c]).astype(np.int32)}
        if self.masks:
            w, h = (int(v) for v in self._sizes[index])
            out["masks"] = [_to_rle(seg, h, w)
                            for seg in self._segms[a:b] + self._crowd_segms[c:d]]
        if self.keypoints:
            kps = self._keypoints[a:b]
            out["keypoints"] = np.concatenate([kps, np.zeros((d - c, *kps.shape[1:]),
                                                             np.float32)])
        return out

    def crowd_counts(self) -> np.ndarray:
        """The number of crowd regions of each example (0 everywhere unless ``crowd``)."""
        return np.diff(self._crowd_start) if self.crowd else np.zeros(len(self), np.int64)

    def __repr__(self):  # grain compares repr(source) when restoring a loader's state
        extra = "".join(f", {k}=True" for k in ("masks", "keypoints", "crowd") if getattr(self, k))
        return (f"CocoSource(annotation_file={self.annotation_file!r}, image_dir="
                f"{self.image_dir!r}, skip_empty={self.skip_empty}, contiguous="
                f"{self.contiguous}{extra}, n={len(self.image_ids)})")

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, index):
        if not 0 <= index < len(self.image_ids):
            raise IndexError(index)
        path = self.files[index]
        try:
            with Image.open(path) as img:
                image = np.asarray(to_rgb(img))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: cannot be read as an image ({e})") from e
        w, h = self._sizes[index]
        if image.shape[:2] != (h, w):  # the boxes would land on other pixels
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, but "
                            f"{self.annotation_file} gives it as {w:g}x{h:g}")
        a, b = self._start[index], self._start[index + 1]
        ex = {"image": image, "boxes": self._boxes[a:b].copy(),
              "classes": self._classes[a:b].copy(), "num_boxes": np.int32(b - a)}
        h, w = image.shape[:2]
        if self.masks:
            ex["masks"] = _decode(self._segms[a:b], h, w)
        if self.keypoints:
            ex["keypoints"] = self._keypoints[a:b].copy()
        if self.crowd:
            c, d = self._crowd_start[index], self._crowd_start[index + 1]
            ex |= {"crowd_boxes": self._crowd_boxes[c:d].copy(),
                   "crowd_classes": self._crowd_classes[c:d].copy(),
                   "num_crowd": np.int32(d - c)}
            if self.masks:
                ex["crowd_masks"] = _decode(self._crowd_segms[c:d], h, w)
        return ex


def _why_empty(source) -> str:
    n = source.num_annotations
    if not n:
        return "its 'annotations' list is empty"
    return (f"none of its {n} annotations is a box of positive size that is not a crowd region"
            + (" and over 1 px both ways" if source.skip_empty else ""))


def coco_sources(cfg, masks: bool = False, keypoints: bool = False, crowd: bool = False):
    """(train, val, class_names) from ``data.coco``: train skips images without boxes; the
    flags as ``CocoSource``'s (``crowd`` only for val: crowd regions are not targets)."""
    require_root(cfg.root, "data.coco.root",
                 "holding annotations/instances_*.json and the image folders")
    at = lambda p: os.path.join(cfg.root, p)  # noqa: E731
    train = CocoSource(at(cfg.train_ann), at(cfg.train_images), skip_empty=True,
                       contiguous=cfg.contiguous, masks=masks, keypoints=keypoints)
    if not len(train):  # else: "steps_per_epoch=0" far from the cause
        raise DataError(f"{train.annotation_file}: holds no annotations to train on "
                        f"({_why_empty(train)})")
    val = CocoSource(at(cfg.val_ann), at(cfg.val_images), contiguous=cfg.contiguous,
                     masks=masks, keypoints=keypoints, crowd=crowd)
    if not val.box_counts().sum():  # every AP would be NaN, and the best checkpoint a guess
        raise DataError(f"{val.annotation_file}: holds no annotations to evaluate against "
                        f"({_why_empty(val)})")
    if train.class_names != val.class_names:
        raise DataError(f"{train.annotation_file} and {val.annotation_file} list different "
                        "categories: a model's label ids must mean the same in both")
    return train, val, train.class_names
