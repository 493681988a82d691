"""Box geometry for joint transforms: against torchvision's v2 box kernels and against pixels."""
import numpy as np
import pytest

from jaxvision.data.box_ops import crop_boxes, hflip_boxes
from jaxvision.ops.resize import resize_boxes, resize_keypoints, to_original_pixels


def _painted(h, w, boxes):
    """An image whose pixels inside box i are i + 1 (boxes on integer coordinates)."""
    img = np.zeros((h, w), np.int32)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, int)):
        img[y1:y2, x1:x2] = i + 1
    return img


def _box_of(img, value):
    ys, xs = np.nonzero(img == value)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


BOXES = np.array([[0, 0, 5, 3], [7, 2, 12, 9], [3, 6, 4, 10]], np.float32)


def test_hflip_keeps_boxes_on_their_pixels():
    img = _painted(10, 12, BOXES)
    flipped, out = img[:, ::-1], hflip_boxes(BOXES, 12)
    for i, box in enumerate(out):
        np.testing.assert_array_equal(box, _box_of(flipped, i + 1))
    np.testing.assert_array_equal(hflip_boxes(out, 12), BOXES)  # an involution


def test_crop_keeps_boxes_on_their_pixels_and_drops_outside():
    img = _painted(10, 12, BOXES)
    top, left, h, w = 2, 4, 6, 7
    crop = img[top:top + h, left:left + w]
    out, classes, keep = crop_boxes(BOXES, np.array([1, 2, 3], np.int32), top, left, h, w)
    # box 0 covers x < 5, y < 3: one pixel row/column inside the crop; box 2 (x 3..4) leaves it
    np.testing.assert_array_equal(keep, [True, True, False])
    np.testing.assert_array_equal(classes, [1, 2])
    for box, value in zip(out, (1, 2)):
        np.testing.assert_array_equal(box, _box_of(crop, value))


def test_crop_min_size_and_empty():
    out, classes, keep = crop_boxes(BOXES, np.arange(3), 0, 0, 10, 12, min_size=4)
    np.testing.assert_array_equal(keep, [False, True, False])  # box 0 is 3 high, box 2 1 wide
    out, classes, _ = crop_boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), 0, 0, 5, 5)
    assert out.shape == (0, 4) and classes.shape == (0,)


def test_resize_scales_x_and_y_apart_on_pixels():
    img = _painted(10, 12, BOXES)
    big = img.repeat(3, axis=0).repeat(2, axis=1)  # nearest upsampling by integer factors
    out = resize_boxes(BOXES, (10, 12), (30, 24))
    for i, box in enumerate(out):
        np.testing.assert_array_equal(box, _box_of(big, i + 1))


def test_to_original_pixels_undoes_the_transforms_scale_for_boxes_and_keypoints():
    scale = np.array([3.0, 2.0], np.float32)  # the data transform's (y, x) factors
    big = resize_boxes(BOXES, (10, 12), (30, 24))
    np.testing.assert_array_equal(to_original_pixels(big, scale), BOXES)
    kps = np.array([[[1.5, 2.0, 2.0], [11.0, 9.0, 0.0]]], np.float32)  # (x, y, visibility)
    back = to_original_pixels(resize_keypoints(kps, (10, 12), (30, 24)), scale)
    np.testing.assert_array_equal(back, kps)
    # a division by each factor, not a multiply by its float32 reciprocal: the last bit counts
    odd = np.array([[0.1, 0.7, 33.3, 1e4]], np.float32)
    third = np.float32(1 / 3)
    got = to_original_pixels(odd, (np.float32(0.3), third))
    np.testing.assert_array_equal(got, odd / np.array([third, 0.3, third, 0.3], np.float32))
    assert got.dtype == np.float32


def test_matches_torchvision_v2_kernels():
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("torchvision.transforms.v2.functional")
    from torchvision import tv_tensors
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, (20, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 30, (20, 2))], 1).astype(np.float32)
    tb = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(70, 80))
    np.testing.assert_allclose(hflip_boxes(boxes, 80), F.horizontal_flip(tb).numpy(), atol=1e-5)
    np.testing.assert_allclose(resize_boxes(boxes, (70, 80), (35, 120)),
                               F.resize(tb, [35, 120]).numpy(), rtol=1e-6, atol=1e-4)
    ref = F.crop(tb, top=10, left=15, height=30, width=25)
    ref = F.clamp_bounding_boxes(ref).numpy()  # v2 clips in its own SanitizeBoundingBoxes step
    ref_keep = (ref[:, 2] > ref[:, 0]) & (ref[:, 3] > ref[:, 1])
    out, _, keep = crop_boxes(boxes, np.arange(20), 10, 15, 30, 25)
    np.testing.assert_array_equal(keep, ref_keep)
    np.testing.assert_allclose(out, ref[ref_keep], atol=1e-5)
