"""nms / batched_nms against torchvision.ops on random trials: any threshold, ties in scores,
degenerate (zero-area) boxes, exact-threshold overlaps, padding rows and max_output_size."""
import numpy as np
import pytest
import torch
import torchvision
import jax
import jax.numpy as jnp

from jaxvision import ops

THRESHOLDS = (0.3, 0.45, 0.5, 0.7)
TRIALS = 100


def _random_case(rng, n):
    # coordinates on a 1/8-px grid: exact in float32 under any offset, so IoUs that equal the
    # threshold exactly occur and test the strict ">"
    xy = rng.integers(0, 400, (n, 2)) / 8
    wh = rng.integers(0, 160, (n, 2)) / 8  # zero width/height: degenerate boxes
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    dup = rng.random(n) < 0.15  # exact duplicate boxes
    boxes[dup] = boxes[rng.integers(0, n, dup.sum())]
    scores = rng.integers(0, 12, n).astype(np.float32) / 12  # many ties
    return boxes, scores


_nms = jax.jit(ops.nms, static_argnums=(2, 3))
_batched = jax.jit(ops.batched_nms, static_argnums=(3, 4))


def _unpad(indices, count):
    indices, count = np.asarray(indices), int(count)
    assert (indices[count:] == -1).all()
    return indices[:count]


@pytest.mark.parametrize("thr", THRESHOLDS)
def test_nms_equals_torchvision(thr):
    rng = np.random.default_rng(int(thr * 100))
    kept_total = 0
    for _ in range(TRIALS):
        boxes, scores = _random_case(rng, 64)
        want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        got = _unpad(*_nms(boxes, scores, thr, 64))
        np.testing.assert_array_equal(got, want)
        kept_total += len(want)
    assert 0 < kept_total < TRIALS * 64  # suppression happened, and not of everything


@pytest.mark.parametrize("thr", THRESHOLDS)
def test_batched_nms_equals_torchvision(thr):
    rng = np.random.default_rng(1 + int(thr * 100))
    for _ in range(TRIALS):
        boxes, scores = _random_case(rng, 64)
        idxs = rng.integers(0, 4, 64)
        want = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                           torch.from_numpy(idxs), thr).numpy()
        got = _unpad(*_batched(boxes, scores, idxs, thr, 64))
        np.testing.assert_array_equal(got, want)


def test_max_output_size_and_padding_rows():
    rng = np.random.default_rng(7)
    boxes, scores = _random_case(rng, 48)
    want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    got, count = _nms(boxes, scores, 0.5, 5)
    assert int(count) == min(5, len(want))
    np.testing.assert_array_equal(np.asarray(got)[:int(count)], want[:5])
    # padding rows (valid=False) with the highest scores change nothing
    pad = np.concatenate([boxes, boxes[:8]]), np.concatenate([scores, np.full(8, 9.0, np.float32)])
    valid = np.arange(56) < 48
    got = _unpad(*jax.jit(ops.nms, static_argnums=(2, 3))(pad[0], pad[1], 0.5, 56, valid))
    np.testing.assert_array_equal(got, want)


def test_threshold_is_strict_and_any_value():
    # IoU of these two boxes is exactly 0.5: torchvision keeps both at 0.5, drops one below
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 2], [10, 10, 11, 11]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    for thr in (0.5, 0.49, 0.3, 0.51):
        want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        np.testing.assert_array_equal(_unpad(*_nms(boxes, scores, thr, 3)), want)
    assert len(_unpad(*_nms(boxes, scores, 0.5, 3))) == 3
    assert len(_unpad(*_nms(boxes, scores, 0.49, 3))) == 2


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"boxes must be \(N, 4\)"):
        ops.nms(jnp.zeros((3, 5)), jnp.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores must be"):
        ops.nms(jnp.zeros((3, 4)), jnp.zeros(4), 0.5)
    with pytest.raises(ValueError, match="idxs must be"):
        ops.batched_nms(jnp.zeros((3, 4)), jnp.zeros(3), jnp.zeros(2, int), 0.5)
