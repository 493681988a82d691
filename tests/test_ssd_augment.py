"""SSD zoom-out and IoU crop: boxes stay on their pixels; the reference's rules hold."""
import numpy as np
import pytest

from jaxvision.data.ssd_augment import SSD_MEAN, random_iou_crop, random_zoom_out

BOXES = np.array([[2, 3, 14, 11], [20, 5, 31, 28], [6, 18, 12, 24], [0, 0, 40, 30]],
                 np.float32)


def _painted():
    """A 30x40 image: box i's pixels hold 10 * (i + 1) in channel 0; channels 1 and 2 hold y
    and x, so a crop's place in the image is unique."""
    img = np.zeros((30, 40, 3), np.uint8)
    img[..., 1], img[..., 2] = np.mgrid[1:31, 1:41]
    for i, (x1, y1, x2, y2) in enumerate(BOXES[:3].astype(int)):
        img[y1:y2, x1:x2, 0] = 10 * (i + 1)
    return img


def _region(img, value):
    ys, xs = np.nonzero(img[..., 0] == value)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_zoom_out_keeps_boxes_on_pixels_and_fills_with_mean():
    img, classes = _painted(), np.arange(4, dtype=np.int32)
    sizes = []
    for seed in range(30):
        out, boxes, cls = random_zoom_out(img, BOXES, classes, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and cls is classes
        if out.shape == img.shape:  # not applied (p = 0.5)
            np.testing.assert_array_equal(boxes, BOXES)
            continue
        h, w = out.shape[:2]
        sizes.append(w / 40)
        assert 30 <= h <= 120 and 40 <= w <= 160
        for i in range(3):
            np.testing.assert_array_equal(boxes[i], _region(out, 10 * (i + 1)))
        x1, y1, x2, y2 = boxes[3].astype(int)  # the whole original image
        np.testing.assert_array_equal(out[y1:y2, x1:x2], img)
        outside = np.ones((h, w), bool)
        outside[y1:y2, x1:x2] = False
        assert (out[outside] == np.array(SSD_MEAN, np.uint8)).all()
    assert 8 <= len(sizes) <= 22 and max(sizes) > 2.5  # about half applied, up to 4x
    same = random_zoom_out(img, BOXES, classes, np.random.default_rng(0), p=0.0)
    assert same[0] is img
    with pytest.raises(ValueError, match="side_range"):
        random_zoom_out(img, BOXES, classes, np.random.default_rng(0), side_range=(0.5, 2))


def test_iou_crop_keeps_boxes_on_pixels_and_drops_by_centre():
    img, classes = _painted(), np.array([5, 6, 7, 8], np.int32)
    cropped = 0
    for seed in range(60):
        out, boxes, cls = random_iou_crop(img, BOXES[:3], classes[:3],
                                          np.random.default_rng(seed))
        if out is img:  # the "leave as it is" option
            np.testing.assert_array_equal(boxes, BOXES[:3])
            continue
        cropped += 1
        h, w = out.shape[:2]
        assert 9 <= h <= 30 and 12 <= w <= 40 and 0.5 <= w / h <= 2
        # find the window: the crop is a sub-array of the painted image
        top, left = int(out[0, 0, 1]) - 1, int(out[0, 0, 2]) - 1
        np.testing.assert_array_equal(img[top:top + h, left:left + w], out)
        centre = (BOXES[:3, :2] + BOXES[:3, 2:]) / 2
        inside = ((centre[:, 0] > left) & (centre[:, 0] < left + w) & (centre[:, 1] > top)
                  & (centre[:, 1] < top + h))
        np.testing.assert_array_equal(cls, classes[:3][inside])
        for box, c in zip(boxes, cls):
            i = int(c) - 5
            np.testing.assert_array_equal(box, _region(out, 10 * (i + 1)))
    assert cropped >= 30  # 6 of the 7 options crop


def test_iou_crop_meets_the_drawn_minimum_and_empty_examples():
    img = np.zeros((30, 40, 3), np.uint8)
    big = np.array([[0, 0, 40, 30]], np.float32)  # IoU with a window = window area / image
    for seed in range(40):
        out, boxes, _ = random_iou_crop(img, big, np.array([1]), np.random.default_rng(seed),
                                        options=(0.7,))
        assert out.shape[0] * out.shape[1] >= 0.7 * 1200
        np.testing.assert_array_equal(boxes, [[0, 0, out.shape[1], out.shape[0]]])
    none = np.zeros((0, 4), np.float32)
    out, boxes, cls = random_iou_crop(img, none, np.zeros(0, np.int32), np.random.default_rng(0))
    assert out is img and boxes.shape == (0, 4) and cls.shape == (0,)
    # no window can reach IoU 0.95 with a tiny box: bounded, returned unchanged
    tiny = np.array([[1, 1, 2, 2]], np.float32)
    out, boxes, _ = random_iou_crop(img, tiny, np.array([1]), np.random.default_rng(0),
                                    options=(0.95,), max_rounds=5)
    assert out is img
