"""roi_align, roi_pool and MultiScaleRoIAlign against torchvision.ops on random maps and boxes:
boxes partly outside the map, tiny (a tenth of a map pixel) and huge (three maps wide), aligned
True and False, sampling_ratio 2 and adaptive, spatial scales 1/4 .. 1/32, the feature gradient
of roi_align, and a 4-level FPN dict for the multi-scale pooler.  Small maps: one compile per
static configuration (the spatial scale is traced)."""
import functools

import numpy as np
import pytest
import torch
import torchvision

import jax
import jax.numpy as jnp

from jaxvision.ops import MultiScaleRoIAlign, roi_align, roi_pool

N, H, W, C = 2, 13, 17, 5
R = 24
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
OUT = (7, 6)
ERRORS = {}  # measured, printed when the module ends (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def _print_errors():
    yield
    print("\nRoI ops max abs errors:", {k: f"{v:.3g}" for k, v in ERRORS.items()})


def _record(key, err):
    ERRORS[key] = max(ERRORS.get(key, 0.0), float(err))
    return err


def _boxes(rng, scale, map_size=(H, W), n=N, r=R):
    """xyxy in image pixels: corners from 30% before to 10% past the image, sides from a tenth
    of a map pixel to three images; a few inside the map, well-formed."""
    img_h, img_w = map_size[0] / scale, map_size[1] / scale
    xy = rng.uniform(-0.3, 1.1, (n, r, 2)) * [img_w, img_h]
    wh = np.exp(rng.uniform(np.log(0.1 / scale), np.log(3 * max(img_h, img_w)), (n, r, 2)))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _rois(boxes):
    return torch.cat([torch.cat([torch.full((b.shape[0], 1), float(i)), torch.from_numpy(b)], 1)
                      for i, b in enumerate(boxes)])


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _per_image(t, n=N):  # torch (N*R, C, oh, ow) -> (N, R, oh, ow, C)
    t = t.detach().numpy()
    return t.reshape(n, -1, *t.shape[1:]).transpose(0, 1, 3, 4, 2)


@functools.cache
def _align_and_grad(aligned, sampling_ratio, max_sampling):
    def run(f, b, scale, ct):
        out, vjp = jax.vjp(lambda f: roi_align(f, b, OUT, scale, sampling_ratio, aligned,
                                               max_sampling=max_sampling), f)
        return out, vjp(ct)[0]
    return jax.jit(run)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_roi_align_and_its_gradient_equal_torchvision(aligned, sampling_ratio):
    rng = np.random.default_rng(int(aligned) * 2 + (sampling_ratio > 0))
    feats = rng.normal(size=(N, H, W, C)).astype(np.float32)
    # the adaptive grid of a box three images wide needs ceil(3 * 17 / 6) = 9 samples a side
    run = _align_and_grad(aligned, sampling_ratio, 9 if sampling_ratio < 0 else None)
    for scale in SCALES:
        boxes = _boxes(rng, scale)
        ft = _nchw(feats).requires_grad_(True)
        want = torchvision.ops.roi_align(ft, _rois(boxes), OUT, scale, sampling_ratio, aligned)
        ct = rng.normal(size=want.shape).astype(np.float32)
        (want * torch.from_numpy(ct)).sum().backward()
        got, grad = run(feats, boxes, scale, _per_image(torch.from_numpy(ct)))
        want_grad = ft.grad.numpy().transpose(0, 2, 3, 1)
        assert np.abs(want_grad).max() > 1  # the huge boxes pile many samples on each pixel
        key = f"aligned={aligned} sampling_ratio={sampling_ratio}"
        assert _record(key, np.abs(got - _per_image(want)).max()) <= 1e-5, scale
        assert _record(key + " gradient", np.abs(grad - want_grad).max()) <= 1e-5, scale


def test_adaptive_default_bound_covers_boxes_inside_the_map_and_flags_the_rest():
    """Without max_sampling the adaptive grid is bounded by the map (any RoI inside it is
    exact); a RoI that needs more samples gives NaN rather than another number."""
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(1, 40, 36, 3)).astype(np.float32)
    xy = rng.uniform(0, 30, (1, 16, 2))
    inside = np.concatenate([xy, np.minimum(xy + rng.uniform(0.5, 36, (1, 16, 2)), 36)], -1)
    inside = inside.astype(np.float32)
    fn = jax.jit(lambda b: roi_align(feats, b, 7, 1.0, -1, False))
    want = _per_image(torchvision.ops.roi_align(_nchw(feats), _rois(inside), 7, 1.0, -1), 1)
    assert _record("adaptive, default bound", np.abs(fn(inside) - want).max()) <= 1e-5
    huge = inside.copy()
    huge[0, 3] = [0, 0, 100, 100]  # 100 / 7 -> 15 samples a side; the map bounds it at 6
    got = np.asarray(fn(huge))
    assert np.isnan(got[0, 3]).all() and not np.isnan(np.delete(got[0], 3, 0)).any()


def test_roi_align_valid_mask_and_bad_input():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    boxes = _boxes(rng, 1.0, (8, 8), r=3)
    valid = np.array([[True, False, True], [False, True, True]])
    out = jax.jit(lambda f, b, v: roi_align(f, b, 2, 1.0, 2, valid=v))(feats, boxes, valid)
    assert out.shape == (2, 3, 2, 2, 3)
    assert not np.asarray(out[~valid]).any() and np.asarray(out[valid]).any()
    with pytest.raises(ValueError, match=r"features must be NHWC"):
        roi_align(feats[0], boxes, 2)
    with pytest.raises(ValueError, match=r"boxes must be \(N, R, 4\) with N = 2"):
        roi_align(feats, boxes[0], 2)
    with pytest.raises(ValueError, match=r"boxes must be \(N, R, 4\) with N = 2"):
        roi_pool(feats, boxes[:1], 2)


def test_roi_pool_equals_torchvision():
    rng = np.random.default_rng(11)
    feats = rng.normal(size=(N, H, W, C)).astype(np.float32)
    fn = jax.jit(lambda f, b, s: roi_pool(f, b, OUT, s, max_bin=max(H, W)))
    default = jax.jit(lambda f, b: roi_pool(f, b, OUT))
    for scale in SCALES + (1.0,):
        boxes = _boxes(rng, scale)
        want = _per_image(torchvision.ops.roi_pool(_nchw(feats), _rois(boxes), OUT, scale))
        np.testing.assert_array_equal(fn(feats, boxes, scale), want)
    # the default window holds every bin of a RoI inside the map; a larger bin gives NaN
    inside = np.array([[[0, 0, 16, 12], [3.4, 2.6, 9.5, 11.2], [5, 5, 5, 5]]] * N, np.float32)
    want = _per_image(torchvision.ops.roi_pool(_nchw(feats), _rois(inside), OUT, 1.0))
    huge = np.array([[[-40, -40, 60, 60]] * 3] * N, np.float32)
    got = np.asarray(default(feats, np.concatenate([inside, huge], 1)))
    np.testing.assert_array_equal(got[:, :3], want)
    assert np.isnan(got[:, 3:]).any()


def test_multiscale_roi_align_equals_torchvision_on_fpn_levels():
    rng = np.random.default_rng(5)
    image_sizes = [(200, 256), (184, 240)]  # torchvision infers the scales from the largest
    feats = {k: rng.normal(size=(N, 200 // s + (s == 16), 256 // s, 8)).astype(np.float32)
             for k, s in zip(("0", "1", "2", "3"), (4, 8, 16, 32))}
    feats["pool"] = rng.normal(size=(N, 4, 4, 8)).astype(np.float32)  # not pooled
    xy = rng.uniform(0, 180, (N, 40, 2))
    boxes = np.concatenate([xy, xy + np.exp(rng.uniform(np.log(4), np.log(700), (N, 40, 2)))],
                           -1).astype(np.float32)
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    with torch.no_grad():
        want = pooler({k: _nchw(v) for k, v in feats.items()},
                      [torch.from_numpy(b) for b in boxes], image_sizes)
    levels = pooler.map_levels([torch.from_numpy(b) for b in boxes])
    assert set(levels.tolist()) == {0, 1, 2, 3}  # every level pooled from
    ours = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    got = jax.jit(lambda f, b: ours(f, b, (200, 256)))(feats, boxes)
    assert _record("MultiScaleRoIAlign", np.abs(got - _per_image(want)).max()) <= 1e-5
    with pytest.raises(ValueError, match=r"features lack \['3'\]"):
        ours({k: v for k, v in feats.items() if k != "3"}, boxes, (200, 256))


def test_bfloat16_maps_keep_float32_sample_positions():
    """bfloat16 maps give bfloat16 outputs within bfloat16 rounding of float32's:
    the sample positions stay float32 (in bfloat16 a 60-pixel map would move samples by up to a
    quarter pixel)."""
    feats = np.random.default_rng(0).normal(size=(1, 50, 60, 4)).astype(np.float32)
    boxes = jnp.array([[[10.3, 20.7, 150.1, 180.9], [200.2, 3.3, 239.9, 60.6]]])
    fn = jax.jit(lambda f: roi_align(f, boxes, 7, 0.25, 2))
    low, full = fn(jnp.asarray(feats, jnp.bfloat16)), fn(feats)
    assert low.dtype == jnp.bfloat16
    assert np.abs(np.asarray(low, np.float32) - full).max() < 2e-2
