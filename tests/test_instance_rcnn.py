"""Mask R-CNN and Keypoint R-CNN against torchvision on the same random weights (backbone
BatchNorm statistics calibrated then perturbed, no all-zero tensor): parameter counts of the
three models as built for torchvision's weights; on two images of different sizes in one padded
batch, the detections one by one and, for each matched pair, the mask pasted at the original
image size (probabilities) or the keypoints and their scores; the losses when both sides use the
same sampled anchors and proposals (ours, handed to torchvision's samplers).

The suite runs both detectors on a ResNet-18 body (torchvision's detector classes around
``_resnet_fpn_extractor(resnet18())``: the same heads and keys) at min_size 192 with 10
detections an image.  Not here yet: the ResNet-50 builders at 800/1333, where boxes moved by up
to 0.11 px (beyond the 1e-2 bar; not yet traced to float32 or to a cause)."""
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import keypoint_rcnn as tv_kp, mask_rcnn as tv_mask
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc as misc_nn_ops

import jax
import jax.numpy as jnp

import jaxvision as jv
from jaxvision.models.detection import transform

from det_helpers import assert_detections_match, check_rcnn_losses
from tv_parity import fill_zero_params_, randomize_

IMAGES = [np.random.default_rng(0).random((240, 320, 3)).astype(np.float32),
          np.random.default_rng(1).random((333, 500, 3)).astype(np.float32)]
# torchvision's keywords, small enough for the suite: 300 proposals, 10 detections, 48 RoIs an
# image in training (12 positives for the mask and keypoint branches)
SMALL = dict(min_size=192, max_size=400, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=300,
             rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=300,
             box_detections_per_img=10, box_batch_size_per_image=48)
# a keypoint head of eight 64-channel convs (torchvision's: 512) on the suite's ResNet-18
KEYPOINT_LAYERS = (64,) * 8


def _count(tree):
    return sum(int(np.prod(l.shape)) for l in jax.tree.leaves(tree))


def _published_layout(name):
    """torchvision's model as built for its weights (FrozenBatchNorm where it uses it)."""
    if name == "maskrcnn_resnet50_fpn_v2":
        return tv_mask.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    body = _resnet_fpn_extractor(torchvision.models.resnet50(
        norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3)
    if name == "keypointrcnn_resnet50_fpn":
        return tv_kp.KeypointRCNN(body, 2, num_keypoints=17)
    return tv_mask.MaskRCNN(body, 91)


@pytest.mark.parametrize("name", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
                                  "keypointrcnn_resnet50_fpn"])
def test_param_counts_equal_torchvisions(name):
    with torch.device("meta"):
        n_torch = sum(p.numel() for p in _published_layout(name).parameters())
    shapes = jv.api.init_variables(jv.create_model(name), name, abstract=True)
    assert _count(shapes["params"]) == n_torch == jv.model_info(name).num_params


def _pair(name, tbuild, **kwargs):
    """(torch model, jaxvision model, its variables converted from the torch state_dict)."""
    torch.manual_seed(0)
    tmodel = tbuild()
    randomize_(tmodel.backbone.body, calib_size=(160, 160))
    fill_zero_params_(tmodel)
    with torch.no_grad():
        for n, p in tmodel.named_parameters():
            if not n.startswith("backbone.body"):
                p.add_(torch.randn_like(p) * 0.01)
        # class scores spread so that many pass 0.05 and NMS and the top-n have work to do
        tmodel.roi_heads.box_predictor.cls_score.bias.normal_(0, 1.0)
    tmodel.eval()
    model = jv.create_model(name, **kwargs)
    return tmodel, model, jv.load_pretrained(name, tmodel.state_dict(), model=model)


def _resnet18_pair(name, tclass, num_classes, textra=None, **extra):
    body = lambda: _resnet_fpn_extractor(torchvision.models.resnet18(), 5)
    return _pair(name, lambda: tclass(body(), num_classes, **SMALL, **(textra or {})),
                 num_classes=num_classes, backbone="resnet18", norm_eps=1e-5, **SMALL, **extra)


@pytest.fixture(scope="module")
def mask18():
    return ("maskrcnn_resnet50_fpn", *_resnet18_pair("maskrcnn_resnet50_fpn", tv_mask.MaskRCNN,
                                                     91))


@pytest.fixture(scope="module")
def keypoint18():
    textra = dict(keypoint_head=tv_kp.KeypointRCNNHeads(256, KEYPOINT_LAYERS),
                  keypoint_predictor=tv_kp.KeypointRCNNPredictor(KEYPOINT_LAYERS[-1], 17))
    return ("keypointrcnn_resnet50_fpn", *_resnet18_pair("keypointrcnn_resnet50_fpn",
                                                         tv_kp.KeypointRCNN, 2, textra,
                                                         keypoint_layers=KEYPOINT_LAYERS))


def _mask_iou(a, b):
    a, b = a > 0.5, b > 0.5
    union = (a | b).sum()
    return 1.0 if union == 0 else (a & b).sum() / union


def check_detections(name, tmodel, model, variables, images):
    """Detections of ``images`` (one padded batch) as torchvision's, with each matched pair's
    pasted mask or keypoints; returns the report line."""
    x, sizes = model.preprocessing.prepare(images)
    dets = jax.jit(lambda v, x, s: model.apply(v, x, image_sizes=s))(variables, x, sizes)
    dets = jax.tree.map(np.asarray, dets)
    with torch.no_grad():
        want = tmodel([torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images])
    got = transform.to_original(dets, sizes, [im.shape[:2] for im in images])
    errs, mask_err, iou, kp_err, kp_score_err, kp_scale = [], 0.0, 1.0, 0.0, 0.0, 1.0
    for i, (g, w) in enumerate(zip(got, want)):
        pairs = []
        errs.append(assert_detections_match(g, w, score_atol=1e-4, box_tol=1e-2, pairs=pairs))
        for a, b in pairs:
            if "masks" in w:
                gm, wm = g["masks"][a], w["masks"][b].numpy()
                assert gm.shape == wm.shape
                mask_err = max(mask_err, float(np.abs(gm - wm).max()))
                iou = min(iou, _mask_iou(gm, wm))
            if "keypoints" in w:
                kp_err = max(kp_err, float(np.abs(g["keypoints"][a]
                                                  - w["keypoints"][b].numpy()).max()))
                kp_score_err = max(kp_score_err, float(np.abs(
                    g["keypoints_scores"][a] - w["keypoints_scores"][b].numpy()).max()))
                kp_scale = max(kp_scale, float(np.abs(w["keypoints_scores"][b]).max()))
        if "masks" in w:  # the masks pasted into the padded input: only the detections'
            n = int(dets["count"][i])
            assert dets["masks"].shape[1:] == (model.box_detections_per_img, *x.shape[1:3])
            assert not dets["masks"][i, n:].any() and dets["masks"][i, :n].any()
            assert not dets["masks"][i, :, sizes[i][0]:].any()
    line = (f"{name}: images {[tuple(s) for s in sizes]}, detections "
            f"{[len(g['scores']) for g in got]} matched (max score "
            f"{max(e[0] for e in errs):.2g}, box {max(e[1] for e in errs):.2g} px)")
    if "masks" in want[0]:
        line += f", mask prob {mask_err:.2g}, min mask IoU {iou:.4f}"
        assert mask_err <= 1e-3 and iou >= 0.99, line
    if "keypoints" in want[0]:
        # the scores are heatmap logits (up to ~30 on random weights): 1e-4 of their scale
        line += f", keypoints {kp_err:.2g} px, scores {kp_score_err:.2g} (of {kp_scale:.3g})"
        assert kp_err <= 0.5 and kp_score_err <= 1e-4 * kp_scale, line
    print("\n" + line)
    return line


def test_mask_rcnn_detections_and_masks_equal_torchvision(mask18):
    check_detections(*mask18, IMAGES)


def test_keypoint_rcnn_detections_and_keypoints_equal_torchvision(keypoint18):
    check_detections(*keypoint18, IMAGES)


def _targets(rng, images, branch):
    """Three random boxes on the first image, two on the second, in the original pixels, with
    an ellipse mask in each box or 17 random keypoints (some outside it, some invisible)."""
    raw = []
    for im, n in zip(images, (3, 2)):
        h, w = im.shape[:2]
        xy = rng.random((n, 2)) * [w * 0.6, h * 0.6]
        b = np.concatenate([xy, xy + rng.random((n, 2)) * [w * 0.3, h * 0.3] + 16], 1)
        t = {"boxes": torch.from_numpy(b.astype(np.float32)),
             "labels": torch.from_numpy(rng.integers(1, 2 if branch == "keypoints" else 6, n))}
        if branch == "masks":
            yy, xx = np.mgrid[:h, :w] + 0.5
            c, r = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) / 2
            inside = (((xx[None] - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2
                      + ((yy[None] - c[:, 1, None, None]) / r[:, 1, None, None]) ** 2) <= 1
            t["masks"] = torch.from_numpy(inside.astype(np.uint8))
        else:
            kp = b[:, None, :2] + rng.random((n, 17, 2)) * (b[:, None, 2:] - b[:, None, :2]) * 1.1
            vis = rng.integers(0, 3, (n, 17, 1))
            t["keypoints"] = torch.from_numpy(np.concatenate([kp, vis], -1).astype(np.float32))
        raw.append(t)
    return raw


def check_losses(name, tmodel, model, variables, images, branch, seed=0):
    """All the losses, torchvision handed our samples (det_helpers.check_rcnn_losses)."""
    raw = _targets(np.random.default_rng(seed), images, branch)
    check_rcnn_losses(name, tmodel, model, variables, images, raw, branch, min_positive=2)


def test_mask_rcnn_losses_equal_torchvision_given_the_same_samples(mask18):
    check_losses(*mask18, IMAGES, "masks")


def test_keypoint_rcnn_losses_equal_torchvision_given_the_same_samples(keypoint18):
    check_losses(*keypoint18, IMAGES, "keypoints")


def test_loss_refuses_missing_masks_and_keypoints(mask18, keypoint18):
    x = jnp.zeros((1, 64, 64, 3))
    boxes, labels, valid = jnp.zeros((1, 2, 4)), jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), bool)
    for (_, _, model, variables), what in ((mask18, "masks"), (keypoint18, "keypoints")):
        with pytest.raises(ValueError, match=f"loss: {what} must be"):
            model.apply(variables, x, boxes, labels, valid, method="loss",
                        rngs={"dropout": jax.random.key(0)})

