"""coco_metrics: hand-checked COCO AP values (101-point interpolation) through COCOeval."""
import math

import numpy as np
import pytest

from jaxvision.tasks.coco_eval import KEYS, coco_metrics

A = [10, 10, 60, 50]  # 50 x 40: medium (32^2 <= 2000 < 96^2)
B = [100, 20, 140, 80]  # 40 x 60: medium
SMALL = [5, 5, 25, 25]  # 20 x 20: small
LARGE = [0, 0, 200, 150]  # large


def _gt(boxes, labels):
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels)}


def _det(boxes, scores, labels):
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "scores": np.array(scores, np.float32), "labels": np.array(labels)}


def test_perfect_predictions_and_empty_image():
    gts = [_gt([A, B], [1, 2]), _gt([], []), _gt([SMALL, LARGE], [1, 1])]
    dets = [_det([A, B], [0.9, 0.8], [1, 2]), _det([], [], []),
            _det([SMALL, LARGE], [0.7, 0.6], [1, 1])]
    m = coco_metrics(gts, dets)
    assert set(m) == set(KEYS)
    for k in KEYS:
        assert m[k] == pytest.approx(1.0), (k, m)


def test_one_of_two_found():
    # class 1 has two GT boxes; one is found exactly (score 0.9), one missed. Ranked by score
    # the only detection is a TP: recall 0.5 at precision 1. COCOeval reads precision at the
    # 101 recall points 0, 0.01, ..., 1: the 51 points r <= 0.5 read 1, the 50 above read 0
    # (recall 0.5 is never passed), so AP = 51 / 101 = 0.50495, at every IoU threshold.
    m = coco_metrics([_gt([A, B], [1, 1])], [_det([A], [0.9], [1])])
    for k in ("ap", "ap50", "ap75", "ap_medium"):
        assert m[k] == pytest.approx(51 / 101), (k, m)
    assert math.isnan(m["ap_small"]) and math.isnan(m["ap_large"])  # no GT there: NaN, not -1


def test_false_positive_ranked_above_the_true_positive():
    # one GT; detections: a miss (score 0.9) then the exact box (0.8). After the first,
    # precision 0/1 at recall 0; after the second 1/2 at recall 1. Interpolated precision is
    # the best precision at that recall or beyond: 0.5 at all 101 points, so AP = 0.5.
    # Ranked the other way round the TP comes first: precision 1 up to recall 1, AP = 1.
    fp = [150, 100, 190, 140]
    m = coco_metrics([_gt([A], [1])], [_det([fp, A], [0.9, 0.8], [1, 1])])
    assert m["ap"] == pytest.approx(0.5) and m["ap50"] == pytest.approx(0.5)
    m = coco_metrics([_gt([A], [1])], [_det([fp, A], [0.7, 0.8], [1, 1])])
    assert m["ap"] == pytest.approx(1.0)


def test_classes_evaluated_apart_and_averaged():
    # class 1 perfect (AP 1); class 2 as above (FP first: AP 0.5); a detection on class 2's box
    # with label 3 finds nothing: class 3 has no GT, so it adds no class to the mean
    gts = [_gt([A], [1]), _gt([B], [2])]
    dets = [_det([A], [0.9], [1]),
            _det([[0, 0, 10, 10], B, B], [0.9, 0.8, 0.95], [2, 2, 3])]
    m = coco_metrics(gts, dets)
    assert m["ap"] == pytest.approx((1.0 + 0.5) / 2)
    # a box offset so that IoU = 0.6 counts at IoU 0.5..0.6 only: 3 of the 10 thresholds
    shifted = [10, 10 + 40 * 0.25, 60, 50 + 40 * 0.25]  # IoU = 30 / 50 = 0.6
    m = coco_metrics([_gt([A], [1])], [_det([shifted], [0.9], [1])])
    assert m["ap50"] == pytest.approx(1.0) and m["ap75"] == pytest.approx(0.0)
    assert m["ap"] == pytest.approx(3 / 10)


def test_area_ranges_and_given_areas():
    # class 1: a small box found; class 2: a large box missed
    gts = [_gt([SMALL, LARGE], [1, 2])]
    dets = [_det([SMALL], [0.9], [1])]
    m = coco_metrics(gts, dets)
    assert m["ap_small"] == pytest.approx(1.0) and m["ap_large"] == pytest.approx(0.0)
    assert math.isnan(m["ap_medium"]) and m["ap"] == pytest.approx(0.5)
    # COCO's area is the segment's: given, it decides the range (the small box becomes medium)
    gts[0]["areas"] = np.array([2000.0, 30000.0])
    m = coco_metrics(gts, dets)
    assert math.isnan(m["ap_small"]) and m["ap_medium"] == pytest.approx(1.0)


def test_crowd_ground_truth_absorbs_detections():
    # a detection on a crowd region is neither a TP nor an FP (COCOeval ignores it)
    gts = [{"boxes": np.array([A, B], np.float32), "labels": np.array([1, 1]),
            "iscrowd": np.array([0, 1])}]
    m = coco_metrics(gts, [_det([B, A], [0.9, 0.8], [1, 1])])
    assert m["ap"] == pytest.approx(1.0)


def test_nothing_to_evaluate_and_bad_input():
    m = coco_metrics([_gt([], [])], [_det([], [], [])])
    assert all(math.isnan(v) for v in m.values())
    with pytest.raises(ValueError, match="2 ground-truth entries but 1 detection"):
        coco_metrics([_gt([], []), _gt([], [])], [_det([], [], [])])
    with pytest.raises(ValueError, match=r"dets\[0\]: 'scores' has 1 entries for 2 boxes"):
        coco_metrics([_gt([A], [1])], [_det([A, B], [0.9], [1, 1])])
    with pytest.raises(ValueError, match=r"gts\[0\]: boxes of shape \(1, 3\)"):
        coco_metrics([{"boxes": np.zeros((1, 3)), "labels": [1]}], [_det([], [], [])])
