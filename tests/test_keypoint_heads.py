"""Keypoint R-CNN's keypoint branch against torchvision's own modules and functions:
KeypointRCNNHeads and KeypointRCNNPredictor converted from torchvision's state_dict under
``roi_heads.*`` (and back), their parameter counts at torchvision's sizes; the heatmap targets,
loss and its gradient on the same padded positives; heatmaps_to_keypoints (locations and
scores) on RoIs from under a pixel to the image's size."""
import numpy as np
import pytest
import torch
from torch import nn as tnn
from torchvision.models import _meta
from torchvision.models.detection import keypoint_rcnn as tv_kp, roi_heads as trh

import jax
import flax.linen as nn

from jaxvision.heads.keypoint_rcnn import (COCO_PERSON_KEYPOINT_NAMES, KEYPOINT_LAYERS,
                                           KeypointRCNNPredictor, heatmaps_to_keypoints,
                                           keypoint_rcnn_heads, keypointrcnn_loss,
                                           keypoints_to_heatmap)

from det_helpers import assert_exports_back, load_strict, randomize_

K = 17


class RoIHeads(nn.Module):
    """The keypoint half of torchvision's RoIHeads: ``keypoint_head``, ``keypoint_predictor``."""
    layers: tuple

    @nn.compact
    def __call__(self, x):
        x = keypoint_rcnn_heads(x, self.layers)
        return KeypointRCNNPredictor(K, name="keypoint_predictor")(x)


class Model(nn.Module):
    layers: tuple = KEYPOINT_LAYERS

    @nn.compact
    def __call__(self, x):
        return RoIHeads(self.layers, name="roi_heads")(x)


def torch_model(in_channels, layers):
    model = tnn.Module()
    model.roi_heads = tnn.Module()
    model.roi_heads.keypoint_head = tv_kp.KeypointRCNNHeads(in_channels, list(layers))
    model.roi_heads.keypoint_predictor = tv_kp.KeypointRCNNPredictor(layers[-1], K)
    return model


def test_coco_keypoints_are_torchvisions():
    assert list(COCO_PERSON_KEYPOINT_NAMES) == _meta._COCO_PERSON_KEYPOINT_NAMES


def test_heads_and_predictor_equal_torchvision_and_convert_both_ways():
    """Parameter count at torchvision's sizes (256 -> 8 x 512, 4x4 / 2 transposed conv to 17,
    bilinear x2); at 48 channels (cheap): strict conversion and back, outputs."""
    shapes = jax.eval_shape(lambda: Model().init(jax.random.key(0),
                                                 np.zeros((1, 14, 14, 256), np.float32)))
    assert (sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes)) ==
            sum(p.numel() for p in torch_model(256, KEYPOINT_LAYERS).parameters()))
    torch.manual_seed(0)
    layers = (48,) * 8
    tmodel = randomize_(torch_model(32, layers), scale=0.02)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 2, 14, 14, 32)).astype(np.float32)
    model = Model(layers)
    variables = load_strict(model, tmodel, x)
    assert_exports_back(variables, tmodel.state_dict())
    assert not any((v == 0).all() for v in jax.tree.leaves(variables))

    tx = torch.from_numpy(x.reshape(4, 14, 14, 32).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        want = tmodel.roi_heads.keypoint_predictor(tmodel.roi_heads.keypoint_head(tx))
    got = jax.jit(model.apply)(variables, x)
    assert got.shape == (2, 2, 56, 56, K)
    want = want.numpy().transpose(0, 2, 3, 1).reshape(got.shape)
    err = float(np.abs(got - want).max())
    print(f"\nkeypoint head: max error {err:.3g} (outputs up to {np.abs(want).max():.3g})")
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


def random_keypoints(rng, n, g, proposals_like):
    """Keypoints around the boxes, some outside, some invisible, some exactly on a right or
    bottom edge (torchvision's last-cell rule)."""
    kp = np.zeros((n, g, K, 3), np.float32)
    for i in range(n):
        for j in range(g):
            x1, y1, x2, y2 = proposals_like[i, j % proposals_like.shape[1]]
            kp[i, j, :, 0] = rng.uniform(x1 - 5, x2 + 5, K)
            kp[i, j, :, 1] = rng.uniform(y1 - 5, y2 + 5, K)
            kp[i, j, :, 2] = rng.integers(0, 3, K)
            kp[i, j, :3, 0] = x2
            kp[i, j, 3:5, 1] = y2
    return kp


@pytest.fixture(scope="module")
def loss_case():
    rng = np.random.default_rng(1)
    n, g, p = 2, 3, 5
    proposals = np.zeros((n, p, 4), np.float32)
    proposals[0, :4] = [[5.5, 3.2, 40.1, 30.7], [-6.0, 10.0, 30.0, 70.0], [0.0, 0.0, 80.0, 64.0],
                        [20.3, 20.1, 22.0, 21.5]]
    proposals[1, :2] = [[50.0, -4.5, 90.0, 40.0], [10.0, 10.0, 70.0, 60.0]]
    matched = np.array([[0, 1, 2, 0, 2], [2, 1, 0, 0, 0]], np.int32)
    valid = np.zeros((n, p), bool)
    valid[0, :4] = valid[1, :2] = True
    # each proposal's ground truth lies around the proposal itself, so many land inside
    around = np.take_along_axis(proposals, np.argsort(matched, 1)[:, :g, None], 1)
    keypoints = random_keypoints(rng, n, g, around)
    logits = rng.normal(size=(n, p, 56, 56, K)).astype(np.float32) * 2
    return proposals, matched, valid, keypoints, logits


def test_heatmap_targets_and_loss_equal_torchvision_with_gradient(loss_case):
    proposals, matched, valid, keypoints, logits = loss_case
    counts = valid.sum(1)
    t_props = [torch.from_numpy(proposals[i, :c]) for i, c in enumerate(counts)]
    t_matched = [torch.from_numpy(matched[i, :c]).long() for i, c in enumerate(counts)]
    t_kps = [torch.from_numpy(k) for k in keypoints]
    t_logits = torch.from_numpy(np.concatenate([logits[i, :c] for i, c in enumerate(counts)])
                                .transpose(0, 3, 1, 2).copy()).requires_grad_()
    kp = np.take_along_axis(keypoints, matched[:, :, None, None], 1)
    cells, ok = jax.jit(keypoints_to_heatmap, static_argnums=2)(kp, proposals, 56)
    n_valid = 0
    for i, c in enumerate(counts):
        want_cells, want_ok = trh.keypoints_to_heatmap(t_kps[i][t_matched[i]], t_props[i], 56)
        np.testing.assert_array_equal(np.asarray(cells)[i, :c], want_cells.numpy())
        np.testing.assert_array_equal(np.asarray(ok)[i, :c], want_ok.numpy().astype(bool))
        n_valid += int(want_ok.sum())
    assert 20 < n_valid < valid.sum() * K  # some keypoints in, some out or invisible

    want = trh.keypointrcnn_loss(t_logits, t_props, t_kps, t_matched)
    want.backward()
    run = jax.jit(jax.value_and_grad(keypointrcnn_loss))
    loss, grad = run(logits, proposals, keypoints, matched, valid)
    rel = abs(float(loss) - want.item()) / want.item()
    want_grad = t_logits.grad.numpy().transpose(0, 2, 3, 1)
    got_grad = np.concatenate([np.asarray(grad)[i, :c] for i, c in enumerate(counts)])
    grad_err = float(np.abs(got_grad - want_grad).max() / np.abs(want_grad).max())
    print(f"\nkeypoint loss {float(loss):.6f} vs {want.item():.6f}: relative error {rel:.2g}, "
          f"gradient relative error {grad_err:.2g}")
    assert rel <= 1e-5 and grad_err <= 1e-5
    assert not np.asarray(grad)[~valid].any()
    loss, grad = run(logits, proposals, keypoints, matched, np.zeros_like(valid))
    assert float(loss) == 0.0 and not np.asarray(grad).any()


def test_heatmaps_to_keypoints_equal_torchvision():
    """Random heatmaps and smooth single-peaked ones (where neighbouring cells of the resized
    map nearly tie), RoIs from under a pixel (clamped to 1) to the image's size, fractional
    corners; one padded batch of two images."""
    rng = np.random.default_rng(4)
    r, h, w = 16, 96, 128
    noise = rng.normal(size=(r, K, 56, 56)).astype(np.float32)
    yy, xx = np.mgrid[0:56, 0:56]
    centres = rng.uniform(0, 56, (2, r, K, 1, 1))
    smooth = 5 * np.exp(-((yy - centres[0]) ** 2 + (xx - centres[1]) ** 2) / 60.0)
    maps = np.concatenate([noise, smooth.astype(np.float32)])
    centre = rng.uniform([0, 0], [w, h], (2 * r, 2))
    size = rng.uniform(0.2, 1.3 * w, (2 * r, 2))
    rois = np.concatenate([np.maximum(centre - size / 2, 0),
                           np.minimum(centre + size / 2, [w, h])], 1).astype(np.float32)
    rois[0] = [0, 0, w, h]
    rois[1] = [10.2, 20.7, 10.5, 20.9]
    got_xy, got_scores = jax.jit(lambda m, b: heatmaps_to_keypoints(m, b, (h, w)))(
        maps.transpose(0, 2, 3, 1).reshape(2, r, 56, 56, K), rois.reshape(2, r, 4))
    want_xy, want_scores = trh.heatmaps_to_keypoints(torch.from_numpy(maps),
                                                     torch.from_numpy(rois))
    got_xy = np.asarray(got_xy).reshape(2 * r, K, 3)
    got_scores = np.asarray(got_scores).reshape(2 * r, K)
    xy_err = float(np.abs(got_xy - want_xy.numpy()).max())
    score_err = float(np.abs(got_scores - want_scores.numpy()).max())
    print(f"\nheatmaps_to_keypoints: {2 * r} RoIs x {K} keypoints, max location error "
          f"{xy_err:.3g} px, max score error {score_err:.3g}")
    assert xy_err <= 0.5 and score_err <= 1e-4


def test_bad_input_is_named_and_an_undersized_bound_is_loud():
    proposals = np.zeros((1, 2, 4), np.float32)
    logits = np.zeros((1, 2, 56, 56, K), np.float32)
    matched, valid = np.zeros((1, 2), np.int32), np.ones((1, 2), bool)
    with pytest.raises(ValueError, match=r"keypointrcnn_loss: keypoints must be \(\.\.\., 17, "
                                         r"3\) \(x, y, visibility per keypoint\), got shape "
                                         r"\(1, 3, 16, 3\)"):
        keypointrcnn_loss(logits, proposals, np.zeros((1, 3, 16, 3)), matched, valid)
    with pytest.raises(ValueError, match=r"keypoints_to_heatmap: keypoints must be \(\.\.\., K, "
                                         r"3\) .*got shape \(2, 17, 2\)"):
        keypoints_to_heatmap(np.zeros((2, 17, 2)), proposals[0], 56)
    with pytest.raises(ValueError, match=r"square heatmaps, got shape \(1, 2, 56, 28, 17\)"):
        keypointrcnn_loss(logits[:, :, :, :28], proposals, np.zeros((1, 3, K, 3)), matched,
                          valid)
    with pytest.raises(ValueError, match=r"rois must be \(1, 2, 4\) \(one xyxy box per heatmap "
                                         r"set\), got shape \(2, 4\)"):
        heatmaps_to_keypoints(logits, proposals[0], (64, 64))
    rois = np.array([[0, 0, 70, 10], [0, 0, 64, 64]], np.float32)  # the first is too wide
    xy, scores = jax.jit(heatmaps_to_keypoints, static_argnums=2)(logits[0], rois, (64, 64))
    assert np.isnan(xy[0]).all() and np.isnan(scores[0]).all()
    assert np.isfinite(xy[1]).all()
