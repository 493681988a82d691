"""RetinaNet head, loss and post-processing against torchvision's, on the same random inputs."""
from functools import partial

import numpy as np
import pytest
import torch
from torchvision.models.detection import retinanet as tv_retina
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

import jax
import jax.numpy as jnp

from jaxvision import ops
from jaxvision.heads.retinanet import RetinaNetHead, retinanet_loss, retinanet_postprocess

from det_helpers import randomize_, run_both

C, K, A = 64, 5, 9
IMAGE = (160, 224)  # padded batch size
GRIDS = [(20, 28), (10, 14), (5, 7), (3, 4), (2, 2)]
torch.manual_seed(0)


def _torch_head(group_norm):
    norm = partial(torch.nn.GroupNorm, 32) if group_norm else None
    return randomize_(tv_retina.RetinaNetHead(C, A, K, norm_layer=norm).eval())


def _features(rng):
    return [rng.normal(size=(2, h, w, C)).astype(np.float32) for h, w in GRIDS]


def _anchors():
    sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (16, 32, 64, 128, 256))
    gen = ops.AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    tv = TVAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    return gen(IMAGE, GRIDS), tv


@pytest.fixture(scope="module", params=[False, True], ids=["v1", "v2_groupnorm"])
def heads(request):
    group_norm = request.param
    thead = _torch_head(group_norm)
    head = RetinaNetHead(A, K, group_norm=group_norm)
    feats = _features(np.random.default_rng(1))
    out, want = run_both(head, thead, feats)
    return group_norm, thead, feats, out, want


def test_head_outputs_equal(heads):
    _, _, _, out, want = heads
    for k in ("cls_logits", "bbox_regression"):
        assert out[k].shape == tuple(want[k].shape)
        np.testing.assert_allclose(out[k], want[k].numpy(), atol=1e-4)


def test_head_init_matches_torchvision_recipe():
    head = RetinaNetHead(A, K)
    v = jax.jit(head.init)(jax.random.key(0), _features(np.random.default_rng(0)))["params"]
    bias = np.asarray(v["classification_head"]["cls_logits"]["bias"])
    np.testing.assert_allclose(bias, -np.log(99.0), rtol=1e-6)  # prior 0.01
    assert float(np.std(v["regression_head"]["conv_0_0"]["kernel"])) == pytest.approx(0.01, rel=0.1)


def _targets(rng, n_boxes):
    boxes, labels = [], []
    for n in n_boxes:
        xy = rng.random((n, 2)) * np.array([180, 120])
        wh = rng.random((n, 2)) * 60 + 8
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32))
        labels.append(rng.integers(0, K, n))
    return boxes, labels


def _pad(boxes, labels, g=6):
    b = np.zeros((len(boxes), g, 4), np.float32)
    l = np.zeros((len(boxes), g), np.int32)
    v = np.zeros((len(boxes), g), bool)
    for i, (bb, ll) in enumerate(zip(boxes, labels)):
        b[i, :len(bb)], l[i, :len(ll)], v[i, :len(bb)] = bb, ll, True
    b[~v] = 37.0  # padding rows hold garbage that must not matter
    return b, l, v


@pytest.mark.parametrize("n_boxes", [(3, 5), (1, 0)])
def test_loss_equals_torchvision(heads, n_boxes):
    group_norm, thead, feats, out, want = heads
    anchors, tv_gen = _anchors()
    tv_model = tv_retina.RetinaNet.__new__(tv_retina.RetinaNet)
    torch.nn.Module.__init__(tv_model)
    tv_model.head = thead
    if group_norm:
        thead.regression_head._loss_type = "giou"
    tv_model.proposal_matcher = tv_retina.det_utils.Matcher(0.5, 0.4, True)
    boxes, labels = _targets(np.random.default_rng(sum(n_boxes)), n_boxes)
    targets = [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(l)}
               for b, l in zip(boxes, labels)]
    tv_anchors = tv_gen(ImageList(torch.zeros(2, 3, *IMAGE), [IMAGE] * 2),
                        [torch.zeros(1, 1, h, w) for h, w in GRIDS])
    with torch.no_grad():
        want_loss = tv_model.compute_loss(targets, want, tv_anchors)
    got = retinanet_loss(out, jnp.concatenate(anchors), *_pad(boxes, labels),
                         box_loss="giou" if group_norm else "l1")
    for k in ("classification", "bbox_regression"):
        np.testing.assert_allclose(float(got[k]), float(want_loss[k]), rtol=1e-5)
    assert float(got["bbox_regression"]) > 0


def test_loss_gradients_are_finite(heads):
    group_norm, _, _, out, _ = heads
    anchors, _ = _anchors()
    padded = _pad(*_targets(np.random.default_rng(3), (2, 0)))
    loss = lambda o: sum(retinanet_loss(o, jnp.concatenate(anchors), *padded,
                                        box_loss="giou" if group_norm else "l1").values())
    grads = jax.jit(jax.grad(loss))(out)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_postprocess_equals_torchvision():
    anchors, _ = _anchors()
    rng = np.random.default_rng(5)
    total = sum(h * w * A for h, w in GRIDS)
    out = {"cls_logits": (rng.normal(size=(2, total, K)) * 1.5 - 2).astype(np.float32),
           "bbox_regression": (rng.normal(size=(2, total, 4)) * 0.5).astype(np.float32)}
    out["bbox_regression"][:, :20, 2:] = 8.0  # beyond the decode clamp
    want = {k: torch.from_numpy(v) for k, v in out.items()}
    image_sizes = [(150, 224), (160, 201)]
    tv_model = tv_retina.RetinaNet.__new__(tv_retina.RetinaNet)
    torch.nn.Module.__init__(tv_model)
    tv_model.box_coder = tv_retina.det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0))
    # thresholds that keep a few hundred candidates and let NMS and the per-level top-k bite
    tv_model.score_thresh, tv_model.nms_thresh = 0.3, 0.5
    tv_model.detections_per_img, tv_model.topk_candidates = 50, 100
    counts = [h * w * A for h, w in GRIDS]
    split = {k: list(v.split(counts, dim=1)) for k, v in want.items()}
    t_anchors = [list(torch.from_numpy(np.concatenate(anchors)).split(counts))] * 2
    with torch.no_grad():
        dets = tv_model.postprocess_detections(split, t_anchors, image_sizes)
    got = jax.jit(lambda o: retinanet_postprocess(o, anchors, np.array(image_sizes), 0.3, 0.5,
                                                  50, 100))(out)
    for i, d in enumerate(dets):
        n = int(got["count"][i])
        assert n == len(d["scores"]) > 0
        np.testing.assert_allclose(got["boxes"][i, :n], d["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(got["scores"][i, :n], d["scores"].numpy(), atol=1e-6)
        np.testing.assert_array_equal(got["labels"][i, :n], d["labels"].numpy())
        assert (np.asarray(got["labels"][i, n:]) == -1).all()
