"""Faster R-CNN against torchvision on the same random weights (backbone BatchNorm statistics
calibrated then perturbed, no all-zero tensor): parameter counts of the four models; RPN
proposals (count, order, boxes) and final detections one by one of two images of different
sizes and aspects in one padded batch; the four losses when both sides use the same sampled
anchors and proposals (ours, handed to torchvision's samplers).  The suite runs
fasterrcnn_mobilenet_v3_large_320_fpn end to end (cheap) and the box head / post-processing of
v2 on small maps; fasterrcnn_resnet50_fpn at 800/1333 is ``slow``, the rest the ``sweep``."""
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import faster_rcnn as tv_frcnn, roi_heads as tv_roi
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops import MultiScaleRoIAlign, misc as misc_nn_ops

import jax
import jax.numpy as jnp

import jaxvision as jv
from jaxvision.heads import roi_heads
from jaxvision.models.detection import transform

from det_helpers import DEFAULT_IMAGES, assert_detections_match, nchw
from tv_parity import as_float64, fill_zero_params_, randomize_

IMAGES = [np.random.default_rng(0).random((240, 320, 3)).astype(np.float32),
          np.random.default_rng(1).random((333, 500, 3)).astype(np.float32)]
NAMES = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
         "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn")


def _count(tree):
    return sum(int(np.prod(l.shape)) for l in jax.tree.leaves(tree))


def _published_layout(name):
    """torchvision's model as built for its weights (FrozenBatchNorm where it uses it), without
    downloading them."""
    if name == "fasterrcnn_resnet50_fpn_v2":  # BatchNorm even with weights
        return tv_frcnn.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    if name == "fasterrcnn_resnet50_fpn":
        body = torchvision.models.resnet50(norm_layer=misc_nn_ops.FrozenBatchNorm2d)
        return tv_frcnn.FasterRCNN(_resnet_fpn_extractor(body, 3), 91)
    body = torchvision.models.mobilenet_v3_large(norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    anchors = tv_frcnn.AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return tv_frcnn.FasterRCNN(_mobilenet_extractor(body, True, 3), 91,
                               rpn_anchor_generator=anchors)


@pytest.mark.parametrize("name", NAMES)
def test_param_counts_equal_torchvisions(name):
    with torch.device("meta"):
        n_torch = sum(p.numel() for p in _published_layout(name).parameters())
    shapes = jv.api.init_variables(jv.create_model(name), name, abstract=True)
    assert _count(shapes["params"]) == n_torch == jv.model_info(name).num_params


def _pair(name, sizes=None, num_classes=91):
    torch.manual_seed(0)
    sizes = sizes or {}
    tmodel = getattr(tv_frcnn, name)(weights=None, weights_backbone=None,
                                     num_classes=num_classes, **sizes)
    randomize_(tmodel.backbone.body, calib_size=(160, 160))
    fill_zero_params_(tmodel)
    with torch.no_grad():
        for n, p in tmodel.named_parameters():
            if not n.startswith("backbone.body"):
                p.add_(torch.randn_like(p) * 0.01)
        # class scores spread so that many pass 0.05 and NMS and the top 100 have work to do
        tmodel.roi_heads.box_predictor.cls_score.bias.normal_(0, 1.0)
    tmodel.eval()
    model = jv.create_model(name, num_classes=num_classes, **sizes)
    return tmodel, model, jv.load_pretrained(name, tmodel.state_dict(), model=model)


def _torch_proposals(tmodel, images, double=False):
    m = as_float64(tmodel) if double else tmodel
    timgs = [torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images]
    with torch.no_grad():
        batch, _ = m.transform([t.double() for t in timgs] if double else timgs)
        return m.rpn(batch, m.backbone(batch.tensors))[0], batch


def check_detections(name, tmodel, model, variables, images):
    """Proposals and detections of ``images`` (one padded batch) as torchvision's; returns the
    report line."""
    want_props, batch = _torch_proposals(tmodel, images)
    x, sizes = model.preprocessing.prepare(images)
    assert [tuple(s) for s in sizes] == [tuple(s) for s in batch.image_sizes]
    np.testing.assert_allclose(x, batch.tensors.numpy().transpose(0, 2, 3, 1), atol=2e-5)
    dets, state = jax.jit(lambda v, x, s: model.apply(v, x, image_sizes=s,
                                                      mutable=["intermediates"]))(variables, x,
                                                                                   sizes)
    props = jax.tree.map(np.asarray, state["intermediates"]["proposals"][0])
    counts, prop_err, truth = [], 0.0, None
    for i, want in enumerate(want_props):
        n = int(props["valid"][i].sum())
        assert n == len(want) and not props["valid"][i, n:].any()
        counts.append(n)
        err = float(np.abs(props["boxes"][i, :n] - want.numpy()).max())
        if err > 1e-3:  # as exact as torch float32 itself: within twice its distance to float64
            truth = truth or _torch_proposals(tmodel, images, double=True)[0]
            ours = np.abs(props["boxes"][i, :n] - truth[i].numpy()).max()
            theirs = np.abs(want.numpy() - truth[i].numpy()).max()
            assert ours <= 2 * theirs, f"{name} image {i}: proposals {err:.3g} px from torch " \
                f"float32; {ours:.3g} from float64, where torch float32 is {theirs:.3g}"
        prop_err = max(prop_err, err)
    with torch.no_grad():
        want = tmodel([torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images])
    got = transform.to_original(jax.tree.map(np.asarray, dets), sizes,
                                [im.shape[:2] for im in images])
    errs = [assert_detections_match(g, w, score_atol=1e-4, box_tol=1e-2)
            for g, w in zip(got, want)]
    line = (f"{name}: images {[tuple(s) for s in sizes]}, proposals {counts} matched (max "
            f"{prop_err:.2g} px), detections {[len(g['scores']) for g in got]} matched (max "
            f"score {max(e[0] for e in errs):.2g}, box {max(e[1] for e in errs):.2g} px)")
    print("\n" + line)
    return line


@pytest.fixture(scope="module")
def mobile320():
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    return (name, *_pair(name))


def test_mobilenet_320_detections_equal_torchvision(mobile320):
    check_detections(*mobile320, IMAGES)


@pytest.mark.slow
def test_resnet50_fpn_detections_equal_torchvision_at_default_sizes():
    check_detections("fasterrcnn_resnet50_fpn", *_pair("fasterrcnn_resnet50_fpn"),
                     DEFAULT_IMAGES)


@pytest.mark.sweep
@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn_v2",
                                  "fasterrcnn_mobilenet_v3_large_fpn"])
def test_detections_equal_torchvision_at_default_sizes(name):
    check_detections(name, *_pair(name), DEFAULT_IMAGES)


def check_losses(name, tmodel, model, variables, images, seed=0):
    """The four losses, torchvision handed our sampled anchors, our proposals (checked
    against its own) and our sampled proposals; its backbone in eval mode (our frozen
    statistics), the RPN and RoI heads in training mode."""
    rng = np.random.default_rng(seed)
    timgs = [torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images]
    raw = []
    for im in images:  # boxes in the original pixels; the transform resizes them
        h, w = im.shape[:2]
        n = 3
        xy = rng.random((n, 2)) * [w * 0.6, h * 0.6]
        b = np.concatenate([xy, xy + rng.random((n, 2)) * [w * 0.3, h * 0.3] + 16], 1)
        raw.append({"boxes": torch.from_numpy(b.astype(np.float32)),
                    "labels": torch.from_numpy(rng.integers(1, 6, n))})
    raw[1] = {"boxes": raw[1]["boxes"][:2], "labels": raw[1]["labels"][:2]}
    tmodel.train()
    tmodel.backbone.eval()
    try:
        with torch.no_grad():
            batch, targets = tmodel.transform(timgs, raw)
        x = batch.tensors.numpy().transpose(0, 2, 3, 1)
        g = 4
        boxes = np.zeros((2, g, 4), np.float32)
        labels, valid = np.zeros((2, g), np.int32), np.zeros((2, g), bool)
        for i, t in enumerate(targets):
            k = len(t["boxes"])
            boxes[i, :k], labels[i, :k], valid[i, :k] = t["boxes"].numpy(), t["labels"], True
        sizes = np.array(batch.image_sizes, np.int32)
        got, state = jax.jit(lambda v, *a: model.apply(
            v, *a[:4], train=False, image_sizes=a[4], method="loss", rngs={"dropout": a[5]},
            mutable=["intermediates"]))(variables, x, boxes, labels, valid, sizes,
                                        jax.random.key(seed))
        inter = jax.tree.map(np.asarray, state["intermediates"])
        pos, neg = inter["rpn_sample"][0]
        sample = inter["roi_sample"][0]
        tmodel.rpn.fg_bg_sampler = lambda _: ([torch.from_numpy(m) for m in pos],
                                              [torch.from_numpy(m) for m in neg])
        with torch.no_grad():
            feats = tmodel.backbone(batch.tensors)
            want_props, rpn_losses = tmodel.rpn(batch, feats, targets)
            # the RoI heads get the same proposals (ours): a box a float32 rounding away moves
            # a RoI across an FPN level boundary now and then
            props = inter["proposals"][0]
            proposals = [torch.from_numpy(props["boxes"][i, :int(props["valid"][i].sum())])
                         for i in range(2)]
            assert [len(q) for q in proposals] == [len(q) for q in want_props]
            for q, w in zip(proposals, want_props):  # the same boxes; near ties may swap
                dist = np.abs(q.numpy()[:, None] - w.numpy()[None]).max(-1)
                assert dist.min(1).max() < 1e-2 and dist.min(0).max() < 1e-2
            p = sample["positive"].shape[1] - g
            keep = lambda m, i: torch.from_numpy(np.concatenate(
                [m[i, :len(proposals[i])], m[i, p:p + len(targets[i]["boxes"])]]))
            tmodel.roi_heads.fg_bg_sampler = lambda _: (
                [keep(sample["positive"], i) for i in range(2)],
                [keep(sample["negative"], i) for i in range(2)])
            _, roi_losses = tmodel.roi_heads(feats, proposals, batch.image_sizes, targets)
    finally:
        tmodel.eval()
    want = {**rpn_losses, **roi_losses}
    assert set(got) == set(want)
    assert sample["valid"].sum() > 0 and (sample["labels"][sample["valid"]] > 0).any()
    errs = {k: abs(float(got[k]) / float(want[k]) - 1) for k in want}
    print(f"\n{name} losses: " + ", ".join(f"{k} {float(got[k]):.6g} (rel err {e:.2g})"
                                           for k, e in errs.items()))
    for k in want:
        np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=1e-5, err_msg=k)


def test_mobilenet_320_losses_equal_torchvision_given_the_same_samples(mobile320):
    check_losses(*mobile320, IMAGES)


@pytest.mark.sweep
def test_resnet50_fpn_losses_equal_torchvision_given_the_same_samples():
    name = "fasterrcnn_resnet50_fpn"
    check_losses(name, *_pair(name, dict(min_size=320, max_size=512)), IMAGES)
