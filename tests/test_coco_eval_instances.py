"""Mask (segm) and keypoint AP through COCOeval: hand-checked cases, crowd regions as ignore
regions, and equality with pycocotools run directly (COCO file + loadRes) on the same RLEs."""
import contextlib
import io
import json
import math

import numpy as np
import pytest

from jaxvision.tasks.coco_eval import KEYS, KP_KEYS, coco_metrics, instance_metrics

H, W = 60, 80


def _mask(x1, y1, x2, y2):
    m = np.zeros((H, W), np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def _gt(masks, labels, **extra):
    return {"masks": np.array(masks, np.uint8).reshape(-1, H, W), "labels": np.array(labels),
            **extra}


def _det(masks, scores, labels):
    return {"masks": np.array(masks).reshape(-1, H, W), "scores": np.array(scores, np.float32),
            "labels": np.array(labels)}


def test_perfect_masks_score_one_with_box_ap_beside():
    a, b = _mask(5, 10, 45, 40), _mask(48, 5, 78, 55)  # 1200 and 1500 px: medium
    boxes = np.array([[5, 10, 45, 40], [48, 5, 78, 55]], np.float32)
    gts = [_gt([a, b], [1, 2], boxes=boxes), _gt([], [], boxes=np.zeros((0, 4)))]
    probs = np.stack([a, b]) * 0.8 + 0.1  # probabilities: > 0.5 on the mask only
    dets = [_det(probs, [0.9, 0.8], [1, 2]) | {"boxes": boxes},
            _det([], [], []) | {"boxes": np.zeros((0, 4))}]
    m = instance_metrics(gts, dets)
    for k in ("ap", "ap50", "ap75", "mask_ap", "mask_ap50", "mask_ap75", "mask_ap_medium"):
        assert m[k] == pytest.approx(1.0), (k, m)
    assert set(m) == set(KEYS) | {f"mask_{k}" for k in KEYS}
    assert math.isnan(m["mask_ap_small"])  # no small ground truth: NaN, not -1
    # a ground truth's area is its mask's, for the box AP's ranges too (as in COCO's files):
    # a 40x40 box (medium) around a 20x20 mask (small)
    g = _gt([_mask(10, 10, 30, 30)], [1], boxes=np.array([[0, 0, 40, 40]], np.float32))
    d = _det([_mask(10, 10, 30, 30)], [0.9], [1]) | {"boxes": g["boxes"]}
    m = instance_metrics([g], [d])
    assert m["ap_small"] == pytest.approx(1) and math.isnan(m["ap_medium"])
    assert coco_metrics([g], [d])["ap_medium"] == pytest.approx(1)  # on its own: the box's


@pytest.mark.parametrize("shift,iou,thresholds", [(12, 0.5, 1), (9, 0.6, 3), (5, 31 / 41, 6),
                                                  (13, 23 / 49, 0)])
def test_overlapping_mask_scores_at_its_iou(shift, iou, thresholds):
    # GT 36 px wide; the detection shifted right by `shift`: IoU = (36 - s) / (36 + s). It is a
    # true positive at the thresholds 0.5, 0.55, ... not above its IoU, so AP = that count / 10
    gt = _mask(20, 10, 56, 50)
    det = _mask(20 + shift, 10, 56 + shift, 50)
    assert (gt & det).sum() / (gt | det).sum() == pytest.approx(iou)
    m = coco_metrics([_gt([gt], [1])], [_det([det], [0.9], [1])], "segm")
    assert m["ap50"] == pytest.approx(float(thresholds > 0))
    assert m["ap75"] == pytest.approx(float(thresholds > 5))
    assert m["ap"] == pytest.approx(thresholds / 10)


def test_crowd_region_ignored_not_a_miss_nor_a_false_positive():
    person, crowd = _mask(5, 5, 30, 50), _mask(40, 5, 78, 55)
    inside = _mask(45, 10, 60, 30)  # a detection within the crowd region
    gts = [_gt([person, crowd], [1, 1], iscrowd=np.array([0, 1]))]
    # the crowd region found by nothing: no miss
    assert coco_metrics(gts, [_det([person], [0.8], [1])], "segm")["ap"] == pytest.approx(1)
    # a higher-scored detection inside it: ignored (crowd IoU = overlap / detection area)
    dets = [_det([inside, person], [0.9, 0.8], [1, 1])]
    assert coco_metrics(gts, dets, "segm")["ap"] == pytest.approx(1)
    # the same region as an ordinary instance: the inside detection is a false positive ranked
    # first, and the region a miss (recall 0.5 at precision 1/2: AP = 51 / 101 * 0.5)
    plain = [_gt([person, crowd], [1, 1])]
    assert coco_metrics(plain, dets, "segm")["ap"] == pytest.approx(0.5 * 51 / 101)


def _random_case(seed, n_images=4):
    """Blobs on random rectangles; detections: jittered copies, misses, false positives."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n_images):
        def blob():
            x1, y1 = rng.integers(0, W - 12), rng.integers(0, H - 12)
            x2, y2 = x1 + rng.integers(6, 40), y1 + rng.integers(6, 40)
            return _mask(x1, y1, min(x2, W), min(y2, H)) & (rng.random((H, W)) < 0.95)
        n = int(rng.integers(1, 5))
        g = [blob() for _ in range(n)]
        labels = rng.integers(1, 3, n)
        crowd = (rng.random(n) < 0.2).astype(int)
        kept = [i for i in range(n) if rng.random() < 0.8]
        d = [np.roll(g[i], rng.integers(-1, 2, 2), (0, 1)) for i in kept]
        dl = list(labels[kept])
        for _ in range(int(rng.integers(0, 3))):
            d.append(blob())
            dl.append(int(rng.integers(1, 3)))
        gts.append(_gt(g, labels, iscrowd=crowd))
        dets.append(_det(d, rng.random(len(d)), dl))
    return gts, dets


def _encode(masks):
    from pycocotools import mask as coco_mask

    out = []
    for m in masks:
        r = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        out.append({"size": r["size"], "counts": r["counts"].decode()})
    return out


def _pycocotools(tmp_path, gts, dets, iou_type, gt_fields, det_fields):
    """COCOeval as its own users run it: the ground truth a JSON file, the detections through
    ``loadRes``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for i, (g, d) in enumerate(zip(gts, dets)):
        images.append({"id": i + 1, "height": H, "width": W})
        for k, fields in enumerate(gt_fields(g)):
            anns.append({"id": len(anns) + 1, "image_id": i + 1,
                         "category_id": int(g["labels"][k]),
                         "iscrowd": int(g.get("iscrowd", np.zeros(99))[k])} | fields)
        for k, fields in enumerate(det_fields(d)):
            results.append({"image_id": i + 1, "category_id": int(d["labels"][k]),
                            "score": float(d["scores"][k])} | fields)
    cats = sorted({a["category_id"] for a in anns + results})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": c} for c in cats]}))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _segm_fields(entry):
    from pycocotools import mask as coco_mask

    rles = _encode(entry["masks"])
    return [{"segmentation": r, "area": float(coco_mask.area(r)),
             "bbox": coco_mask.toBbox(r).tolist()} for r in rles]


def test_segm_ap_equals_pycocotools_on_the_same_rles(tmp_path):
    gts, dets = _random_case(0)
    stats = _pycocotools(tmp_path, gts, dets, "segm", _segm_fields,
                         lambda d: [{"segmentation": r} for r in _encode(d["masks"])])
    assert 0.1 < stats[0] < stats[1] < 0.9  # a case that is neither trivial nor empty
    want = {k: float(s) for k, s in zip(KEYS, stats)}
    for masks_as in (lambda m: m, _encode):  # arrays, or the RLEs themselves
        got = coco_metrics([g | {"masks": masks_as(g["masks"])} for g in gts],
                           [d | {"masks": masks_as(d["masks"])} for d in dets], "segm")
        for k in KEYS:
            assert got[k] == pytest.approx(want[k], abs=1e-12) or (
                math.isnan(got[k]) and want[k] == -1), (k, got, want)


def _kp_case(seed):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(3):
        n = int(rng.integers(1, 4))
        centre = rng.uniform(15, 45, (n, 1, 2))
        xy = centre + rng.normal(0, 12, (n, 17, 2))  # areas ~ 2000 px: medium
        v = rng.choice([0, 1, 2], (n, 17), p=[0.2, 0.3, 0.5])
        kps = np.concatenate([xy * (v[..., None] > 0), v[..., None]], 2)
        lo, hi = xy.min(1) - 2, xy.max(1) + 2
        boxes = np.concatenate([lo, hi], 1)
        areas = np.prod(hi - lo, 1) * 0.6
        gts.append({"keypoints": kps, "boxes": boxes, "labels": np.ones(n, int), "areas": areas})
        noisy = np.concatenate([xy + rng.normal(0, 2, xy.shape), np.ones((n, 17, 1))], 2)
        dets.append({"keypoints": noisy, "scores": rng.random(n), "labels": np.ones(n, int),
                     "boxes": boxes + rng.normal(0, 1, boxes.shape)})
    return gts, dets


def test_keypoint_ap_perfect_and_equal_to_pycocotools(tmp_path):
    gts, dets = _kp_case(1)
    exact = [d | {"keypoints": np.where(g["keypoints"][..., 2:] > 0, g["keypoints"],
                                        np.concatenate([g["keypoints"][..., :2],
                                                        np.ones_like(g["keypoints"][..., :1])],
                                                       2))}
             for g, d in zip(gts, dets)]
    assert coco_metrics(gts, exact, "keypoints")["ap"] == pytest.approx(1.0)

    def gt_fields(g):
        return [{"keypoints": k.reshape(-1).tolist(), "num_keypoints": int((k[:, 2] > 0).sum()),
                 "area": float(a), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                for k, a, b in zip(g["keypoints"], g["areas"], g["boxes"].tolist())]

    stats = _pycocotools(tmp_path, gts, dets, "keypoints", gt_fields,
                         lambda d: [{"keypoints": k.reshape(-1).tolist()}
                                    for k in d["keypoints"]])
    got = coco_metrics(gts, dets, "keypoints")
    assert 0 < stats[0] < 1 and 0 < stats[3] < 1
    for k, s in zip(KP_KEYS, stats):
        assert got[k] == pytest.approx(s, abs=1e-12) or (math.isnan(got[k]) and s == -1)
    m = instance_metrics(gts, dets, masks=False, keypoints=True)
    assert m["kp_ap"] == got["ap"] and "mask_ap" not in m


def test_bad_mask_and_keypoint_input():
    a = _mask(0, 0, 10, 10)
    with pytest.raises(ValueError, match=r"ground-truth masks are 60x80 but detected masks "
                                         r"30x80"):
        coco_metrics([_gt([a], [1])], [{"masks": np.zeros((1, 30, 80)), "scores": [1.0],
                                        "labels": [1]}], "segm")
    with pytest.raises(ValueError, match=r"gts\[0\]: no 'masks'"):
        coco_metrics([{"boxes": np.zeros((1, 4)), "labels": [1]}], [_det([a], [1], [1])],
                     "segm")
    with pytest.raises(ValueError, match=r"keypoints of \[14\] points, but 17 OKS sigmas"):
        kp = {"keypoints": np.ones((1, 14, 3)), "labels": [1]}
        coco_metrics([kp | {"boxes": np.zeros((1, 4))}], [kp | {"scores": [1.0]}], "keypoints")
    with pytest.raises(ValueError, match="iou_type 'mask'"):
        coco_metrics([], [], "mask")
