"""The region proposal network against torchvision's RegionProposalNetwork in eval mode, on the
same random head weights and FPN maps: head outputs, and the proposals of two images of
different sizes in one padded batch (count, boxes, scores, order) with Faster R-CNN's settings
(pre/post-NMS top-n 1000, NMS 0.7, min size 1e-3), for v1's one-conv and v2's two-conv head.
Three anchors a cell (the FPN models'); maps of 16 channels keep it cheap."""
import numpy as np
import pytest
import torch
from torchvision.models.detection import anchor_utils, faster_rcnn, rpn as tv_rpn
from torchvision.models.detection.image_list import ImageList

import jax
import jax.numpy as jnp

from jaxvision.heads.rpn import (FPN_ANCHORS, MOBILENET_ANCHORS, RPNHead, rpn_loss,
                                 rpn_proposals, rpn_targets, sample_labels)

from det_helpers import random_targets, randomize_, run_both

PADDED = (128, 160)
IMAGE_SIZES = [(128, 160), (100, 150)]
GRIDS = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]  # strides 4..64, as FPN's P2..pool
C = 16


# v2's head with a score threshold, so that fewer than post_nms_top_n survive
@pytest.mark.parametrize("conv_depth, score_thresh", [(1, 0.0), (2, 0.6)])
def test_proposals_equal_torchvision(conv_depth, score_thresh):
    torch.manual_seed(conv_depth)
    thead = randomize_(tv_rpn.RPNHead(C, 3, conv_depth=conv_depth), scale=0.1)
    trpn = tv_rpn.RegionProposalNetwork(
        faster_rcnn._default_anchorgen(), thead, 0.7, 0.3, 256, 0.5,
        dict(training=2000, testing=1000), dict(training=2000, testing=1000), 0.7,
        score_thresh=score_thresh).eval()
    rng = np.random.default_rng(conv_depth)
    feats = [rng.normal(size=(2, h, w, C)).astype(np.float32) for h, w in GRIDS]
    (logits, deltas), (want_logits, want_deltas) = run_both(RPNHead(3, conv_depth), thead, feats)
    for g, w in zip(logits + deltas, want_logits + want_deltas):
        np.testing.assert_allclose(g, w.numpy().transpose(0, 2, 3, 1), atol=1e-5)

    images = ImageList(torch.zeros(2, 3, *PADDED), IMAGE_SIZES)
    tfeats = {str(i): torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for i, f in enumerate(feats)}
    with torch.no_grad():
        want_boxes, _ = trpn(images, tfeats)
        # the scores: RegionProposalNetwork.forward's steps, to reach filter_proposals' output
        obj, pred = thead(list(tfeats.values()))
        per_level = [o[0].numel() for o in obj]
        obj, pred = tv_rpn.concat_box_prediction_layers(obj, pred)
        proposals = trpn.box_coder.decode(pred, trpn.anchor_generator(images, list(
            tfeats.values()))).view(2, -1, 4)
        again, want_scores = trpn.filter_proposals(proposals, obj, IMAGE_SIZES, per_level)
    anchors = FPN_ANCHORS(PADDED, GRIDS)
    got = jax.jit(lambda o, d: rpn_proposals(o, d, anchors, np.array(IMAGE_SIZES),
                                             score_thresh=score_thresh))(logits, deltas)
    box_err = score_err = 0.0
    for i, (want, scores) in enumerate(zip(want_boxes, want_scores)):
        np.testing.assert_array_equal(again[i], want)
        n = int(got["valid"][i].sum())
        assert n == len(want) > 20
        assert not np.asarray(got["valid"][i, n:]).any()
        box_err = max(box_err, float(np.abs(got["boxes"][i, :n] - want.numpy()).max()))
        score_err = max(score_err, float(np.abs(got["scores"][i, :n] - scores.numpy()).max()))
    print(f"\nRPN conv_depth={conv_depth}: proposals {[len(w) for w in want_boxes]}, max box "
          f"error {box_err:.3g} px, score error {score_err:.3g}")
    assert box_err <= 1e-3 and score_err <= 1e-5


def test_mismatched_levels_are_named():
    anchors = FPN_ANCHORS(PADDED, GRIDS)
    logits = [jnp.zeros((1, h, w, 3)) for h, w in GRIDS]
    deltas = [jnp.zeros((1, h, w, 12)) for h, w in GRIDS]
    with pytest.raises(ValueError, match="4 anchor levels; expected one of each per level"):
        rpn_proposals(logits, deltas, anchors[:4], np.array([PADDED]))
    with pytest.raises(ValueError, match="level 1 has 960 objectness values but 480 anchors"):
        rpn_proposals(logits, deltas, [anchors[0], anchors[1][:480]] + anchors[2:],
                      np.array([PADDED]))


@pytest.mark.parametrize("ours, grids", [(FPN_ANCHORS, GRIDS),
                                         (MOBILENET_ANCHORS, [(8, 10), (4, 5), (2, 3)])])
def test_anchors_equal_torchvisions_rpn_generators(ours, grids):
    """The ResNet-FPN models' _default_anchorgen and the MobileNet models' generator, bitwise."""
    theirs = (faster_rcnn._default_anchorgen() if ours is FPN_ANCHORS else
              anchor_utils.AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3))
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    want = theirs(ImageList(torch.zeros(1, 3, *PADDED), [PADDED]), feats)[0].numpy()
    np.testing.assert_array_equal(np.concatenate(ours(PADDED, grids)), want)
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location()


def test_targets_sampler_and_losses_equal_torchvision():
    """Labels and regression targets of every anchor (the second image has no ground truth),
    the sampler's counts, and both losses when torchvision is handed the same sampled anchors
    (its own sampler draws from torch's generator)."""
    torch.manual_seed(3)
    thead = randomize_(tv_rpn.RPNHead(C, 3), scale=0.1)
    trpn = tv_rpn.RegionProposalNetwork(faster_rcnn._default_anchorgen(), thead, 0.7, 0.3, 256,
                                        0.5, dict(training=2000, testing=1000),
                                        dict(training=2000, testing=1000), 0.7)
    rng = np.random.default_rng(3)
    feats = [rng.normal(size=(2, h, w, C)).astype(np.float32) for h, w in GRIDS]
    targets, boxes, _, valid = random_targets(rng, (4, 0), 5, 100, 12, 60)
    (logits, deltas), (tlogits, tdeltas) = run_both(RPNHead(3), thead, feats)
    images = ImageList(torch.zeros(2, 3, *PADDED), IMAGE_SIZES)
    tanchors = trpn.anchor_generator(images, [torch.zeros(1, 1, h, w) for h, w in GRIDS])
    want_labels, matched = trpn.assign_targets_to_anchors(tanchors, targets)
    want_targets = trpn.box_coder.encode(matched, tanchors)
    anchors = np.concatenate(FPN_ANCHORS(PADDED, GRIDS))
    labels, reg = jax.jit(rpn_targets)(anchors, boxes, valid)
    np.testing.assert_array_equal(labels, np.stack([l.numpy() for l in want_labels]))
    pos = np.asarray(labels) == 1
    assert pos[0].sum() >= 4 and not pos[1].any()
    np.testing.assert_allclose(np.asarray(reg)[0][pos[0]], want_targets[0].numpy()[pos[0]],
                               atol=1e-5)

    positive, negative = jax.jit(sample_labels)(jax.random.key(0), labels)
    positive, negative = np.array(positive), np.array(negative)
    lab = np.asarray(labels)
    for i in range(2):
        n_pos = min(128, (lab[i] == 1).sum())
        assert positive[i].sum() == n_pos and (lab[i][positive[i]] == 1).all()
        assert negative[i].sum() == min(256 - n_pos, (lab[i] == 0).sum())
        assert (lab[i][negative[i]] == 0).all()
    other = np.asarray(jax.jit(sample_labels)(jax.random.key(1), labels)[1])
    assert not np.array_equal(other, negative)  # another key, another draw

    trpn.fg_bg_sampler = lambda _: ([torch.from_numpy(m) for m in positive],
                                    [torch.from_numpy(m) for m in negative])
    with torch.no_grad():
        obj, pred = tv_rpn.concat_box_prediction_layers(tlogits, tdeltas)
        want = trpn.compute_loss(obj, pred, want_labels, want_targets)
    got = jax.jit(rpn_loss)(logits, deltas, labels, reg, positive, negative)
    print(f"\nRPN losses: ours {[float(v) for v in got.values()]}, torch "
          f"{[float(v) for v in want]}")
    np.testing.assert_allclose(float(got["loss_objectness"]), float(want[0]), rtol=1e-5)
    np.testing.assert_allclose(float(got["loss_rpn_box_reg"]), float(want[1]), rtol=1e-5)
    # the image without ground truth has -inf targets (as torchvision's): no NaN gradient
    assert np.isinf(np.asarray(reg)[1]).any()
    grads = jax.jit(jax.grad(lambda d: sum(rpn_loss(logits, d, labels, reg, positive,
                                                    negative).values())))(deltas)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
