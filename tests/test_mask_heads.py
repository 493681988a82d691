"""Mask R-CNN's mask branch against torchvision's own modules and functions: MaskRCNNHeads (v1,
v2's BatchNorm in eval and train mode, GroupNorm) and MaskRCNNPredictor converted from
torchvision's state_dict under ``roi_heads.*`` (and back), their parameter counts at torchvision's
sizes; the mask targets, loss and its gradient on the same padded positives; inference; and
paste_masks_in_image on random masks and boxes, partly outside the image."""
import functools

import numpy as np
import pytest
import torch
from torch import nn as tnn
from torchvision.models.detection import mask_rcnn as tv_mask, roi_heads as trh

import jax
import flax.linen as nn

from jaxvision.convert import torchvision as tv
from jaxvision.heads.mask_rcnn import (MaskRCNNPredictor, mask_rcnn_heads, maskrcnn_inference,
                                       maskrcnn_loss, paste_masks_in_image,
                                       project_masks_on_boxes)

from det_helpers import assert_exports_back, load_strict, randomize_

NUM_CLASSES = 5
TORCH_NORMS = {None: None, "batch": tnn.BatchNorm2d,
               "group": functools.partial(tnn.GroupNorm, 32)}


class RoIHeads(nn.Module):
    """The mask half of torchvision's RoIHeads: ``mask_head`` and ``mask_predictor``."""
    layers: tuple
    norm: str = None

    @nn.compact
    def __call__(self, x, train=False, valid=None):
        x = mask_rcnn_heads(x, train, self.layers, norm=self.norm, valid=valid)
        return MaskRCNNPredictor(NUM_CLASSES, self.layers[-1], name="mask_predictor")(x)


class Model(nn.Module):
    layers: tuple = (256,) * 4
    norm: str = None

    @nn.compact
    def __call__(self, x, train=False, valid=None):
        return RoIHeads(self.layers, self.norm, name="roi_heads")(x, train, valid)


def torch_model(layers, norm):
    model = tnn.Module()
    model.roi_heads = tnn.Module()
    model.roi_heads.mask_head = tv_mask.MaskRCNNHeads(layers[0], list(layers), 1,
                                                      TORCH_NORMS[norm])
    model.roi_heads.mask_predictor = tv_mask.MaskRCNNPredictor(layers[-1], layers[-1],
                                                               NUM_CLASSES)
    return model


def calibrate_(head, x):
    """BatchNorm statistics of ``x``'s batch, then perturbed (uncalibrated random statistics
    blow activations up)."""
    bns = [m for m in head.modules() if isinstance(m, tnn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # the first batch's statistics exactly
    head.train()
    with torch.no_grad():
        head(x)
        for m in bns:
            m.running_mean.add_(torch.randn_like(m.running_mean) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
            m.momentum = 0.1
            m.num_batches_tracked.zero_()


def param_count(module, x):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("norm", [None, "batch", "group"])
def test_heads_and_predictor_equal_torchvision_and_convert_both_ways(norm):
    """Parameter count at torchvision's sizes (256 -> 4 x 256, 2x2 transposed conv to 256, 1x1
    to the classes); at 64 channels (cheap): strict conversion from torchvision's state_dict
    under ``roi_heads.*`` and back, eval outputs; for v2's BatchNorm also train mode on a
    padded batch (statistics of the real RoIs only) and the running statistics it leaves."""
    full = (256,) * 4
    assert (param_count(Model(full, norm), np.zeros((1, 14, 14, 256), np.float32))
            == sum(p.numel() for p in torch_model(full, norm).parameters()))
    torch.manual_seed(0)
    layers = (64,) * 4
    tmodel = randomize_(torch_model(layers, norm), scale=0.02)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 14, 14, 64)).astype(np.float32)
    tx = torch.from_numpy(x.reshape(6, 14, 14, 64).transpose(0, 3, 1, 2).copy())
    if norm == "batch":  # statistics of a real batch, perturbed: none of them the init's
        calibrate_(tmodel.roi_heads.mask_head, tx)
    model = Model(layers, norm)
    variables = load_strict(model, tmodel, x)
    assert_exports_back(variables, tmodel.state_dict())

    tmodel.eval()
    with torch.no_grad():
        want = tmodel.roi_heads.mask_predictor(tmodel.roi_heads.mask_head(tx))
    got = jax.jit(model.apply)(variables, x)
    assert got.shape == (2, 3, 28, 28, NUM_CLASSES)
    assert not any((v == 0).all() for v in jax.tree.leaves(variables))
    want = want.numpy().transpose(0, 2, 3, 1).reshape(got.shape)
    err = float(np.abs(got - want).max())
    print(f"\nmask head norm={norm}: eval max error {err:.3g} (outputs up to "
          f"{np.abs(want).max():.3g})")
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())

    if norm != "batch":
        return
    valid = np.array([[True, True, False], [True, False, False]])
    tmodel.train()
    with torch.no_grad():
        want = tmodel.roi_heads.mask_predictor(tmodel.roi_heads.mask_head(tx[[0, 1, 3]]))
    got, updated = jax.jit(functools.partial(model.apply, train=True, mutable="batch_stats"))(
        variables, x, valid=valid)
    got = np.asarray(got)[valid]
    want = want.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())
    stats = tv.to_state_dict({"batch_stats": updated["batch_stats"]})
    for key, value in tmodel.state_dict().items():
        if "running" in key:
            np.testing.assert_allclose(stats[key], value.numpy(), rtol=1e-5, atol=1e-7,
                                       err_msg=key)


def random_masks(rng, n, g, h, w):
    """Blobby binary masks: thresholded smooth noise, so RoIAlign sees edges and interiors."""
    noise = rng.normal(size=(n, g, h // 8 + 2, w // 8 + 2))
    up = np.kron(noise, np.ones((8, 8)))[:, :, :h, :w]
    return (up > 0.3).astype(np.uint8)


@pytest.fixture(scope="module")
def loss_case():
    """Two images (64x80 masks), 3 ground-truth slots (2 and 3 real), 6 positive slots (4 and 2
    real), proposals partly outside the image, tiny and image-sized."""
    rng = np.random.default_rng(1)
    n, g, p, h, w = 2, 3, 6, 64, 80
    masks = random_masks(rng, n, g, h, w)
    labels = rng.integers(1, NUM_CLASSES, (n, g)).astype(np.int32)
    proposals = np.zeros((n, p, 4), np.float32)
    proposals[0, :4] = [[5.5, 3.2, 40.1, 30.7], [-6.0, 10.0, 30.0, 70.0], [0.0, 0.0, 80.0, 64.0],
                        [20.3, 20.1, 21.0, 20.5]]
    proposals[1, :2] = [[50.0, -4.5, 90.0, 40.0], [10.0, 10.0, 70.0, 60.0]]
    matched = np.array([[0, 1, 1, 0, 2, 2], [2, 0, 0, 0, 0, 0]], np.int32)
    valid = np.zeros((n, p), bool)
    valid[0, :4] = valid[1, :2] = True
    logits = rng.normal(size=(n, p, 28, 28, NUM_CLASSES)).astype(np.float32) * 3
    return masks, labels, proposals, matched, valid, logits


def test_mask_targets_and_loss_equal_torchvision_with_gradient(loss_case):
    masks, labels, proposals, matched, valid, logits = loss_case
    counts = valid.sum(1)
    t_masks = [torch.from_numpy(m) for m in masks]
    t_props = [torch.from_numpy(proposals[i, :c]) for i, c in enumerate(counts)]
    t_matched = [torch.from_numpy(matched[i, :c]).long() for i, c in enumerate(counts)]
    t_labels = [torch.from_numpy(l).long() for l in labels]
    t_logits = torch.from_numpy(np.concatenate([logits[i, :c] for i, c in enumerate(counts)])
                                .transpose(0, 3, 1, 2).copy()).requires_grad_()

    # one compilation: the loss, its gradient and the targets it projects
    run = jax.jit(lambda valid: (jax.value_and_grad(maskrcnn_loss)(
        logits, proposals, masks, labels, matched, valid),
        project_masks_on_boxes(masks, proposals, matched)))
    (loss, grad), targets = run(valid)
    for i, c in enumerate(counts):
        want = trh.project_masks_on_boxes(t_masks[i], t_props[i], t_matched[i], 28).numpy()
        np.testing.assert_allclose(targets[i, :c], want, atol=1e-5)
        assert 0.05 < want.mean() < 0.95  # edges, not empty boxes

    want = trh.maskrcnn_loss(t_logits, t_props, t_masks, t_labels, t_matched)
    want.backward()
    rel = abs(float(loss) - want.item()) / want.item()
    want_grad = t_logits.grad.numpy().transpose(0, 2, 3, 1)
    got_grad = np.concatenate([np.asarray(grad)[i, :c] for i, c in enumerate(counts)])
    grad_err = float(np.abs(got_grad - want_grad).max() / np.abs(want_grad).max())
    print(f"\nmask loss {float(loss):.6f} vs {want.item():.6f}: relative error {rel:.2g}, "
          f"gradient relative error {grad_err:.2g}")
    assert rel <= 1e-5 and grad_err <= 1e-5
    assert not np.asarray(grad)[~valid].any()

    # no positives at all: 0, as torchvision's (its sum() * 0), with a finite zero gradient
    (loss, grad), _ = run(np.zeros_like(valid))
    assert float(loss) == 0.0 and not np.asarray(grad).any()


def test_inference_picks_the_label_channel():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(7, 28, 28, NUM_CLASSES)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, 7)
    want = trh.maskrcnn_inference(torch.from_numpy(logits.transpose(0, 3, 1, 2).copy()),
                                  [torch.from_numpy(labels[:4]), torch.from_numpy(labels[4:])])
    want = torch.cat(want)[:, 0].numpy()
    got = maskrcnn_inference(logits, labels.astype(np.int32))
    np.testing.assert_allclose(got, want, atol=1e-6)


def random_boxes(rng, d, h, w, largest):
    """Boxes centred in the image, many partly outside it (torchvision's own paste fails on a
    box wholly above or left of the image), some under a pixel, some larger than the image."""
    centre = rng.uniform([0, 0], [w, h], (d, 2))
    size = rng.uniform(0.3, largest, (d, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)


def test_paste_masks_equal_torchvision():
    """Random probabilities and boxes, integer-cornered boxes among them (where an FMA in the
    box expansion would move a truncated corner by a pixel), for two images of different sizes
    pasted into one static shape (zero beyond each image, as torchvision's image ends there)."""
    rng = np.random.default_rng(3)
    d, h, w = 20, 72, 96
    masks = rng.random((2, d, 28, 28)).astype(np.float32)
    sizes = np.array([[h, w], [50, 61]], np.int32)
    boxes = np.stack([random_boxes(rng, d, hi, wi, 1.2 * wi) for hi, wi in sizes])
    boxes[:, :5] = np.round(boxes[:, :5])
    got = np.asarray(jax.jit(lambda m, b, s: paste_masks_in_image(m, b, (h, w), image_size=s))(
        masks, boxes, sizes))
    err, iou, outside = 0.0, 1.0, 0
    for i, (hi, wi) in enumerate(sizes):
        want = trh.paste_masks_in_image(torch.from_numpy(masks[i])[:, None],
                                        torch.from_numpy(boxes[i]), (hi, wi))[:, 0].numpy()
        assert not got[i, :, hi:].any() and not got[i, :, :, wi:].any()
        mine = got[i, :, :hi, :wi]
        err = max(err, float(np.abs(mine - want).max()))
        inter = ((mine > 0.5) & (want > 0.5)).sum((1, 2))
        union = ((mine > 0.5) | (want > 0.5)).sum((1, 2))
        iou = min(iou, float((inter / np.maximum(union, 1)).min()))
        outside += int(((boxes[i, :, :2] < 0) | (boxes[i, :, 2:] > [wi, hi])).any(1).sum())
    print(f"\npaste_masks_in_image: {2 * d} masks ({outside} boxes partly outside), max error "
          f"{err:.3g}, min mask IoU at 0.5 {iou:.4f}")
    assert outside >= 10 and err <= 1e-3 and iou >= 0.99


def test_a_box_beyond_the_sampling_bound_is_loud():
    boxes = np.array([[[0, 0, 60, 60], [0, 0, 20, 20]]], np.float32)  # 3 and 1 samples a side
    out = jax.jit(project_masks_on_boxes, static_argnums=(3, 4))(
        np.ones((1, 1, 64, 64), np.uint8), boxes, np.zeros((1, 2), np.int32), 28, 1)
    assert np.isnan(out[0, 0]).all() and np.allclose(out[0, 1], 1.0)


def test_bad_input_is_named():
    masks, boxes = np.zeros((3, 28, 28), np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"boxes must be \(3, 4\) \(one xyxy box per mask\), "
                                         r"got shape \(2, 4\)"):
        paste_masks_in_image(masks, boxes[:2], (10, 10))
    with pytest.raises(ValueError, match=r"masks must be \(D, M, M\) or \(N, D, M, M\), got "
                                         r"shape \(3, 28, 27\)"):
        paste_masks_in_image(masks[:, :, :27], boxes, (10, 10))
    with pytest.raises(ValueError, match=r"image_size must be \(2,\), got shape \(1, 2\)"):
        paste_masks_in_image(masks, boxes, (10, 10), image_size=np.array([[5, 5]]))
    with pytest.raises(ValueError, match=r"matched_idxs must be \(N, P\) = \(1, 3\), got "
                                         r"shape \(1, 2\)"):
        project_masks_on_boxes(np.zeros((1, 2, 8, 8)), boxes[None], np.zeros((1, 2), int))
    with pytest.raises(ValueError, match=r"mask_logits must be \(N, P, M, M, K\)"):
        maskrcnn_loss(np.zeros((3, 28, 28, 2)), boxes[None], np.zeros((1, 2, 8, 8)),
                      np.zeros((1, 2), int), np.zeros((1, 3), int), np.ones((1, 3), bool))
    with pytest.raises(ValueError, match=r"labels \(4,\) must match the RoIs of mask_logits "
                                         r"\(3,\)"):
        maskrcnn_inference(np.zeros((3, 28, 28, 2)), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"norm must be one of \(None, 'batch', 'group'\), "
                                         r"got 'layer'"):
        Model(norm="layer").init(jax.random.key(0), np.zeros((1, 14, 14, 256), np.float32))
