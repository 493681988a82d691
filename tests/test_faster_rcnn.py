"""Faster R-CNN against torchvision on the same random weights (backbone BatchNorm statistics
calibrated then perturbed, no all-zero tensor): parameter counts of the four models; RPN
proposals (count, boxes up to near-tied scores and float32-decided NMS) and final detections one
by one of two images of different sizes and aspects in one padded batch; the four losses when
both sides use the same sampled anchors and proposals (ours, handed to torchvision's samplers).
The suite runs fasterrcnn_mobilenet_v3_large_320_fpn end to end (cheap) and the box head /
post-processing of v2 on small maps; the other three at 800/1333 (minutes each on 2 cores) run
in the ``sweep``."""
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
from jaxvision.models.detection.faster_rcnn import FasterRCNN

from det_helpers import (DEFAULT_IMAGES, assert_detections_match, check_rcnn_losses,
                         match_up_to_nms_ties, nchw)
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
            if n.startswith("backbone.fpn") and n.endswith("weight"):
                p.mul_(0.1)  # FPN maps of O(10), as trained ones, not O(600): unsaturated scores
            if not n.startswith("backbone.body"):
                p.add_(torch.randn_like(p) * 0.01)
        # class scores spread so that many pass 0.05 and NMS and the top 100 have work to do
        tmodel.roi_heads.box_predictor.cls_score.bias.normal_(0, 1.0)
        if name == "fasterrcnn_resnet50_fpn":  # its published weights use eps 0, our default
            for m in tmodel.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eps = 0.0
    tmodel.eval()
    model = jv.create_model(name, num_classes=num_classes, **sizes)
    return tmodel, model, jv.load_pretrained(name, tmodel.state_dict(), model=model)


def _torch_proposals(tmodel, images, double=False):
    m = as_float64(tmodel) if double else tmodel
    timgs = [torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images]
    with torch.no_grad():
        batch, _ = m.transform([t.double() for t in timgs] if double else timgs)
        return m.rpn(batch, m.backbone(batch.tensors))[0], batch


def _matched(a, b, tol):
    """The fraction of boxes ``a`` with a box of ``b`` within ``tol`` px, and the largest such
    distance: the same proposals, whose near-tied scores may swap neighbours, and where one
    suppression float32 decides may let one box in on one side only."""
    dist = np.abs(a[:, None] - b[None]).max(-1).min(1)
    return float((dist <= tol).mean()), float(dist[dist <= tol].max(initial=0.0))


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
    counts, prop_err, fracs, truth = [], 0.0, [], None
    for i, want in enumerate(want_props):
        n = int(props["valid"][i].sum())
        assert n == len(want) and not props["valid"][i, n:].any()
        frac, err = _matched(props["boxes"][i, :n], want.numpy(), 1e-3)
        if frac < 0.99:  # as exact as torch float32: as near float64's as torch's are, twice
            truth = truth or _torch_proposals(tmodel, images, double=True)[0]
            t = truth[i].numpy().astype(np.float32)
            d = np.abs(want.numpy()[:, None] - t[None]).max(-1).min(1)
            bar = max(1e-3, 2 * float(np.quantile(d, 0.99)))
            ours = _matched(props["boxes"][i, :n], t, bar)[0]
            assert ours >= 0.99, f"{name} image {i}: {frac:.1%} of proposals within 1e-3 px " \
                f"of torch float32's, {ours:.1%} within {bar:.3g} px of float64's"
            print(f"\n{name} image {i}: {frac:.1%} of proposals within 1e-3 px of torch float32's;"
                  f" {ours:.1%} within {bar:.3g} px (twice torch float32's) of float64's")
        counts.append(n)
        fracs.append(frac)
        prop_err = max(prop_err, err)
    with torch.no_grad():
        want = tmodel([torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images])
    got = transform.to_original(jax.tree.map(np.asarray, dets), sizes,
                                [im.shape[:2] for im in images])
    errs = [match_up_to_nms_ties(g, {k: v.numpy() for k, v in w.items()},
                                 model.box_nms_thresh) for g, w in zip(got, want)]
    line = (f"{name}: images {[tuple(s) for s in sizes]}, proposals {counts}, "
            f"{min(fracs):.1%} matched (max {prop_err:.2g} px), detections "
            f"{[len(g['scores']) for g in got]} matched (max "
            f"score {max(e[0] for e in errs):.2g}, box {max(e[1] for e in errs):.2g} px)")
    print("\n" + line)
    return line


@pytest.fixture(scope="module")
def mobile320():
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    return (name, *_pair(name))


def test_mobilenet_320_detections_equal_torchvision(mobile320):
    check_detections(*mobile320, IMAGES)


@pytest.mark.sweep
@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
                                  "fasterrcnn_mobilenet_v3_large_fpn"])
def test_detections_equal_torchvision_at_default_sizes(name):
    check_detections(name, *_pair(name), DEFAULT_IMAGES)


def check_losses(name, tmodel, model, variables, images, seed=0):
    """The four losses, torchvision handed our samples (det_helpers.check_rcnn_losses), our
    proposals checked against its own."""
    rng = np.random.default_rng(seed)
    raw = []
    for im in images:  # boxes in the original pixels; the transform resizes them
        h, w = im.shape[:2]
        n = 3
        xy = rng.random((n, 2)) * [w * 0.6, h * 0.6]
        b = np.concatenate([xy, xy + rng.random((n, 2)) * [w * 0.3, h * 0.3] + 16], 1)
        raw.append({"boxes": torch.from_numpy(b.astype(np.float32)),
                    "labels": torch.from_numpy(rng.integers(1, 6, n))})
    raw[1] = {"boxes": raw[1]["boxes"][:2], "labels": raw[1]["labels"][:2]}

    def check_proposals(ours, theirs):
        for q, w in zip(ours, theirs):
            assert _matched(q.numpy(), w.numpy(), 1e-2)[0] >= 0.99

    check_rcnn_losses(name, tmodel, model, variables, images, raw,
                      check_proposals=check_proposals)


def test_mobilenet_320_losses_equal_torchvision_given_the_same_samples(mobile320):
    check_losses(*mobile320, IMAGES)


@pytest.mark.sweep
def test_resnet50_fpn_losses_equal_torchvision_given_the_same_samples():
    name = "fasterrcnn_resnet50_fpn"
    check_losses(name, *_pair(name, dict(min_size=320, max_size=512)), IMAGES)


def test_v2_box_head_and_postprocess_equal_torchvision():
    """v2's four-conv one-FC box head (BatchNorm statistics random) and the predictor on
    pooled RoIs of a small 4-level pyramid, then postprocess_detections, against torchvision's
    RoIHeads in eval mode: two images of different sizes, some proposals padding."""
    c, k, sizes, padded = 16, 5, [(128, 160), (100, 150)], (128, 160)
    torch.manual_seed(0)
    thead = tv_roi.RoIHeads(
        MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
        tv_frcnn.FastRCNNConvFCHead((c, 7, 7), [c] * 4, [64], norm_layer=torch.nn.BatchNorm2d),
        tv_frcnn.FastRCNNPredictor(64, k), 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100).eval()
    with torch.no_grad():
        for name, t in thead.state_dict().items():
            if "running_var" in name:
                t.copy_(torch.rand_like(t) + 0.5)
            elif t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)
    rng = np.random.default_rng(0)
    feats = {str(i): rng.normal(size=(2, 32 >> i, 40 >> i, c)).astype(np.float32)
             for i in range(4)}
    counts, slots = (40, 31), 48
    props = np.zeros((2, slots, 4), np.float32)
    for i, (n, (h, w)) in enumerate(zip(counts, sizes)):
        xy = rng.random((n, 2)) * [w * 0.7, h * 0.7]
        props[i, :n] = np.concatenate([xy, xy + rng.random((n, 2)) * [w * 0.5, h * 0.5] + 4], 1)
    valid = np.arange(slots)[None] < np.array(counts)[:, None]
    with torch.no_grad():
        tfeats = {n: nchw(f) for n, f in feats.items()}
        tprops = [torch.from_numpy(props[i, :n]) for i, n in enumerate(counts)]
        want, _ = thead(tfeats, tprops, sizes)
        pooled = thead.box_roi_pool(tfeats, tprops, sizes)
        want_logits, _ = thead.box_predictor(thead.box_head(pooled))

    from jaxvision.convert import merge, torchvision as tv
    heads = roi_heads.RoIBoxHeads(k, "conv_fc", 64, (c,) * 4)
    pooler = jv.ops.MultiScaleRoIAlign(list(feats), 7, 2)
    ours = jax.jit(lambda f, p: pooler(f, p, padded))(feats, jnp.asarray(props))
    target = jax.eval_shape(lambda: heads.init(jax.random.key(0), ours))
    report = merge.Report()
    source, names = tv.map_state_dict(thead.state_dict(), target, report)
    variables = merge.fill(dict(target), source, names, report, True, shown_shape=tv.torch_shape)

    def run(v, pooled):
        logits, deltas = heads.apply(v, pooled)
        return logits, roi_heads.postprocess_detections(logits, deltas, jnp.asarray(props),
                                                        valid, np.array(sizes))

    logits, dets = jax.jit(run)(variables, ours)
    np.testing.assert_allclose(np.concatenate([logits[i, :n] for i, n in enumerate(counts)]),
                               want_logits.numpy(), atol=1e-4)
    for i, w in enumerate(want):
        n = int(dets["count"][i])
        got = {k: np.asarray(dets[k][i, :n]) for k in ("boxes", "labels", "scores")}
        assert n > 10
        assert_detections_match(got, w, score_atol=1e-5, box_tol=1e-3)


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="variant must be one of"):
        FasterRCNN(variant="v3").init(
            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="num_classes counts the background and must be >= 2"):
        jv.create_model("fasterrcnn_resnet50_fpn", num_classes=1).init(
            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="backbone must be one of"):
        jv.create_model("fasterrcnn_resnet50_fpn", backbone="vgg16").init(
            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="is a detector"):
        jv.create_model("fasterrcnn_resnet50_fpn_v2", features_only=True)
    with pytest.raises(ValueError, match="head must be 'mlp' or 'conv_fc'"):
        roi_heads.RoIBoxHeads(5, "conv").init(jax.random.key(0), jnp.zeros((1, 2, 7, 7, 4)))
    assert jv.create_model("fasterrcnn_resnet50_fpn").frozen_stages == 1
    from jaxvision import tasks  # the engine trains them as detectors (method="loss")
    assert tasks.model_task(jv.model_info("fasterrcnn_resnet50_fpn").family) == "detection"
    with pytest.raises(ValueError, match="no ResNet stages"):
        jv.create_model("fasterrcnn_mobilenet_v3_large_fpn").frozen_stages
