"""Box arithmetic, coders, anchors and matchers against torchvision's own implementations."""
import math

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

import jax
import jax.numpy as jnp

from jaxvision import ops


def _boxes(rng, n, scale=100.0, degenerate=False):
    xy = rng.random((n, 2)) * scale
    wh = rng.random((n, 2)) * scale / 2 + (0 if degenerate else 1)
    if degenerate:
        wh[: n // 4] = 0
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_iou_giou_area_clip_convert():
    rng = np.random.default_rng(0)
    a, b = _boxes(rng, 37), _boxes(rng, 23)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    np.testing.assert_allclose(ops.box_iou(a, b), torchvision.ops.box_iou(ta, tb), atol=1e-7)
    np.testing.assert_allclose(ops.generalized_box_iou(a, b),
                               torchvision.ops.generalized_box_iou(ta, tb), atol=1e-6)
    np.testing.assert_allclose(ops.box_area(a), torchvision.ops.box_area(ta), rtol=1e-7)
    np.testing.assert_array_equal(ops.clip_boxes_to_image(a, (60, 45)),
                                  torchvision.ops.clip_boxes_to_image(ta, (60, 45)))
    small = np.zeros(len(a), bool)
    small[torchvision.ops.remove_small_boxes(ta, 20.0).numpy()] = True
    np.testing.assert_array_equal(ops.small_box_mask(a, 20.0), small)
    for src in ("xyxy", "xywh", "cxcywh"):
        for dst in ("xyxy", "xywh", "cxcywh"):
            np.testing.assert_allclose(ops.box_convert(a, src, dst),
                                       torchvision.ops.box_convert(ta, src, dst), atol=1e-5)
    with pytest.raises(ValueError, match="formats must be among"):
        ops.box_convert(a, "xyxy", "yxyx")
    # batched (..., N, 4) inputs, as padded per-image ground truth
    batched = ops.box_iou(np.stack([a[:5], a[5:10]]), np.stack([b[:4], b[4:8]]))
    np.testing.assert_allclose(batched[1], torchvision.ops.box_iou(ta[5:10], tb[4:8]), atol=1e-7)


def test_degenerate_iou_is_nan_like_torchvision():
    a = np.array([[1, 1, 1, 1], [0, 0, 2, 2]], np.float32)
    got = np.asarray(ops.box_iou(a, a))
    want = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(a)).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0, 0])


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder(weights):
    rng = np.random.default_rng(1)
    gt, anchors = _boxes(rng, 50), _boxes(rng, 50)
    tv = det_utils.BoxCoder(weights)
    ours = ops.BoxCoder(weights)
    want = tv.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors)).numpy()
    np.testing.assert_allclose(ours.encode(gt, anchors), want, rtol=1e-5, atol=1e-6)
    codes = rng.normal(size=(50, 4)).astype(np.float32) * 2
    codes[:5, 2:] = 10.0  # beyond log(1000/16): the clamp matters
    want = tv.decode_single(torch.from_numpy(codes), torch.from_numpy(anchors)).numpy()
    np.testing.assert_allclose(ours.decode(codes, anchors), want, rtol=1e-5, atol=1e-4)
    assert ours.bbox_xform_clip == pytest.approx(math.log(1000 / 16))


def test_box_linear_coder():
    rng = np.random.default_rng(2)
    anchors, gt = _boxes(rng, 40), _boxes(rng, 40)
    for norm in (True, False):
        tv, ours = det_utils.BoxLinearCoder(norm), ops.BoxLinearCoder(norm)
        want = tv.encode(torch.from_numpy(anchors), torch.from_numpy(gt)).numpy()
        np.testing.assert_allclose(ours.encode(anchors, gt), want, rtol=1e-5, atol=1e-5)
        codes = rng.random((40, 4)).astype(np.float32)
        want = tv.decode(torch.from_numpy(codes), torch.from_numpy(anchors)).numpy()
        np.testing.assert_allclose(ours.decode(codes, anchors), want, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("image, grids", [
    ((480, 640), [(60, 80), (30, 40), (15, 20), (8, 10), (4, 5)]),
    ((333, 501), [(42, 63), (21, 32), (11, 16), (6, 8), (3, 4)]),  # odd: stride = size // grid
])
def test_anchor_generator_bitwise(image, grids):
    sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
    ratios = ((0.5, 1.0, 2.0),) * len(sizes)
    tv = TVAnchorGenerator(sizes, ratios)
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    want = tv(ImageList(torch.zeros(1, 3, *image), [image]), feats)[0]
    got = np.concatenate(ops.AnchorGenerator(sizes, ratios)(image, grids))
    np.testing.assert_array_equal(got, want.numpy())
    assert ops.AnchorGenerator(sizes, ratios).num_anchors_per_location() == [9] * 5
    with pytest.raises(ValueError, match="5 levels"):
        ops.AnchorGenerator(sizes, ratios)(image, grids[:3])


def _quality(rng, g, a):
    q = rng.random((g, a)).astype(np.float32)
    q[rng.random((g, a)) < 0.5] = 0
    q[:, 3] = q[:, 7]  # ties between anchors for every gt
    return q


@pytest.mark.parametrize("low_quality", [False, True])
def test_matcher_with_padding(low_quality):
    rng = np.random.default_rng(3)
    tv = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=low_quality)
    ours = jax.jit(ops.Matcher(0.5, 0.4, allow_low_quality_matches=low_quality).__call__)
    for g in (1, 3, 6):
        q = _quality(rng, g, 200)
        want = tv(torch.from_numpy(q)).numpy()
        # padded to 8 rows whose garbage quality is higher than any real one
        padded = np.concatenate([q, np.full((8 - g, 200), 0.99, np.float32)])
        got = ours(padded, np.arange(8) < g)
        np.testing.assert_array_equal(got, want)
    none = ours(np.full((8, 200), 0.9, np.float32), np.zeros(8, bool))
    assert (np.asarray(none) == ops.BELOW_LOW_THRESHOLD).all()
    with pytest.raises(ValueError, match="low_threshold"):
        ops.Matcher(0.3, 0.5)


def test_ssd_matcher_with_padding():
    rng = np.random.default_rng(4)
    tv = det_utils.SSDMatcher(0.5)
    ours = jax.jit(ops.SSDMatcher(0.5).__call__)
    for g in (1, 4):
        q = _quality(rng, g, 100)
        q[:, 11] = 0.97  # every gt's best anchor is the same one: the last gt takes it
        want = tv(torch.from_numpy(q)).numpy()
        padded = np.concatenate([q, np.full((6 - g, 100), 0.99, np.float32)])
        np.testing.assert_array_equal(ours(padded, np.arange(6) < g), want)


def test_default_box_generator_bitwise():
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TVDefault

    args = dict(aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    grids = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    want = TVDefault(**args)(ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]),
                             [torch.zeros(1, 1, h, w) for h, w in grids])[0]
    gen = ops.DefaultBoxGenerator(**args)
    np.testing.assert_array_equal(np.concatenate(gen((300, 300), grids)), want.numpy())
    assert gen.num_anchors_per_location() == [4, 6, 6, 6, 4, 4]
    # no steps, no scales: the grid and the linear scale rule (SSDlite's configuration)
    lite = dict(aspect_ratios=[[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    grids = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    want = TVDefault(**lite)(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]),
                             [torch.zeros(1, 1, h, w) for h, w in grids])[0]
    np.testing.assert_array_equal(np.concatenate(ops.DefaultBoxGenerator(**lite)((320, 320), grids)),
                                  want.numpy())
