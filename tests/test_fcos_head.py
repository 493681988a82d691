"""FCOS head, loss and post-processing against torchvision's, on the same random inputs."""
import numpy as np
import pytest
import torch
from torchvision.models.detection import fcos as tv_fcos
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

import jax
import jax.numpy as jnp

from jaxvision import ops
from jaxvision.heads.fcos import FCOSHead, fcos_loss, fcos_postprocess

from det_helpers import randomize_, run_both

C, K = 64, 4
IMAGE = (160, 224)
GRIDS = [(20, 28), (10, 14), (5, 7), (3, 4), (2, 2)]
SIZES = ((8,), (16,), (32,), (64,), (128,))


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    thead = randomize_(tv_fcos.FCOSHead(C, 1, K).eval())
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(2, h, w, C)).astype(np.float32) for h, w in GRIDS]
    out, want = run_both(FCOSHead(1, K), thead, feats)
    return thead, out, want


def test_head_outputs_equal(heads):
    _, out, want = heads
    for k in ("cls_logits", "bbox_regression", "bbox_ctrness"):
        assert out[k].shape == tuple(want[k].shape)
        np.testing.assert_allclose(out[k], want[k].numpy(), atol=1e-4)


def _anchors():
    ours = ops.AnchorGenerator(SIZES, ((1.0,),) * 5)(IMAGE, GRIDS)
    theirs = TVAnchorGenerator(SIZES, ((1.0,),) * 5)(
        ImageList(torch.zeros(2, 3, *IMAGE), [IMAGE] * 2),
        [torch.zeros(1, 1, h, w) for h, w in GRIDS])
    return ours, theirs


def _targets(rng, counts):
    boxes, labels = [], []
    for n in counts:
        xy = rng.random((n, 2)) * np.array([150, 100])
        wh = rng.random((n, 2)) * np.array([70, 55]) + 6
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32))
        labels.append(rng.integers(0, K, n))
    g = 7
    b = np.full((len(counts), g, 4), 11.0, np.float32)  # garbage in padding rows
    l = np.zeros((len(counts), g), np.int32)
    v = np.zeros((len(counts), g), bool)
    for i, (bb, ll) in enumerate(zip(boxes, labels)):
        b[i, :len(bb)], l[i, :len(ll)], v[i, :len(bb)] = bb, ll, True
    return boxes, labels, (b, l, v)


@pytest.mark.parametrize("counts", [(4, 6), (3, 0)])
def test_loss_equals_torchvision(heads, counts):
    thead, out, want = heads
    anchors, tv_anchors = _anchors()
    boxes, labels, padded = _targets(np.random.default_rng(sum(counts)), counts)
    tv_model = tv_fcos.FCOS.__new__(tv_fcos.FCOS)
    torch.nn.Module.__init__(tv_model)
    tv_model.head, tv_model.center_sampling_radius = thead, 1.5
    targets = [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(l)}
               for b, l in zip(boxes, labels)]
    with torch.no_grad():
        want_loss = tv_model.compute_loss(targets, want, tv_anchors, [h * w for h, w in GRIDS])
    got = jax.jit(lambda o, *t: fcos_loss(o, anchors, *t))(out, *padded)
    for k in ("classification", "bbox_regression", "bbox_ctrness"):
        np.testing.assert_allclose(float(got[k]), float(want_loss[k]), rtol=1e-5)
    assert float(got["bbox_ctrness"]) > 0  # positives were found

    grads = jax.jit(jax.grad(lambda o: sum(fcos_loss(o, anchors, *padded).values())))(out)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_postprocess_equals_torchvision():
    anchors, _ = _anchors()
    rng = np.random.default_rng(5)
    total = sum(h * w for h, w in GRIDS)
    out = {"cls_logits": (rng.normal(size=(2, total, K)) * 1.5).astype(np.float32),
           "bbox_regression": np.abs(rng.normal(size=(2, total, 4)) * 2).astype(np.float32),
           "bbox_ctrness": rng.normal(size=(2, total, 1)).astype(np.float32)}
    image_sizes = [(150, 224), (160, 201)]
    tv_model = tv_fcos.FCOS.__new__(tv_fcos.FCOS)
    torch.nn.Module.__init__(tv_model)
    tv_model.box_coder = tv_fcos.det_utils.BoxLinearCoder(True)
    tv_model.score_thresh, tv_model.nms_thresh = 0.4, 0.6
    tv_model.detections_per_img, tv_model.topk_candidates = 60, 150
    counts = [h * w for h, w in GRIDS]
    split = {k: list(torch.from_numpy(v).split(counts, dim=1)) for k, v in out.items()}
    t_anchors = [list(torch.from_numpy(np.concatenate(anchors)).split(counts))] * 2
    with torch.no_grad():
        dets = tv_model.postprocess_detections(split, t_anchors, image_sizes)
    got = jax.jit(lambda o: fcos_postprocess(o, anchors, np.array(image_sizes), 0.4, 0.6, 60,
                                             150))(out)
    for i, d in enumerate(dets):
        n = int(got["count"][i])
        assert n == len(d["scores"]) > 0
        np.testing.assert_allclose(got["boxes"][i, :n], d["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(got["scores"][i, :n], d["scores"].numpy(), atol=1e-6)
        np.testing.assert_array_equal(got["labels"][i, :n], d["labels"].numpy())
