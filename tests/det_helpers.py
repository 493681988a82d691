"""Shared by the detection-head tests: run a torchvision head and its jaxvision twin, with the
torch weights converted by the generic converter, on the same NHWC pyramid."""
import numpy as np
import torch
import torchvision
import jax

from jaxvision.convert import merge, torchvision as tv
from jaxvision.tasks import detection

# common photo shapes (VGA, and a 333x500 PASCAL-style one): at torchvision's default 800/1333
# they become 800x1066 and 800x1201, where a float32 scale rule gives 799 rows
DEFAULT_IMAGES = [np.random.default_rng(10).random((480, 640, 3)).astype(np.float32),
                  np.random.default_rng(11).random((333, 500, 3)).astype(np.float32)]


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def randomize_(module, scale=0.05):
    """torchvision zero-initialises head biases: perturb every tensor so none compares zeros."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def load_strict(module, tmodule, *args):
    """``module``'s variables converted strictly (every tensor and every leaf used once) from
    ``tmodule``'s state_dict by the generic converter; ``args`` are ``module``'s inputs."""
    target = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
    report = merge.Report()
    source, names = tv.map_state_dict(tmodule.state_dict(), target, report)
    return merge.fill(dict(target), source, names, report, True, shown_shape=tv.torch_shape)


def assert_exports_back(variables, state_dict):
    """The inverse converter gives back ``state_dict``: the same keys, the same tensors."""
    back = tv.to_state_dict(variables)
    assert sorted(back) == sorted(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def run_both(head, thead, feats):
    """(jaxvision outputs, torchvision outputs) of ``head`` loaded strictly from ``thead``."""
    variables = load_strict(head, thead, feats)
    with torch.no_grad():
        want = thead([nchw(f) for f in feats])
    return jax.jit(head.apply)(variables, feats), want


def predict_both(tmodel, model, variables, images):
    """(jaxvision's ``detection.predict`` from the module alone -- no name: the model carries
    its preprocessing --, torchvision's eval forward) on ``images`` (HWC [0, 1]), both batching
    all the images in one call as torchvision pads them together."""
    with torch.no_grad():
        want = tmodel.eval()([torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images])
    return detection.predict(model, variables, images), want


def random_targets(rng, counts, slots, span, min_size, extent, first_label=1, num_labels=5,
                   pad=9.0):
    """Random boxes for len(counts) images: torch's list of target dicts and the padded
    (boxes, labels, valid) arrays the jaxvision losses take."""
    targets = []
    boxes = np.full((len(counts), slots, 4), pad, np.float32)
    labels, valid = np.zeros((len(counts), slots), np.int32), np.zeros((len(counts), slots), bool)
    for i, n in enumerate(counts):
        xy = rng.random((n, 2)) * span
        b = np.concatenate([xy, xy + rng.random((n, 2)) * extent + min_size], 1)
        b = b.astype(np.float32)
        l = rng.integers(first_label, first_label + num_labels, n)
        targets.append({"boxes": torch.from_numpy(b), "labels": torch.from_numpy(l)})
        boxes[i, :n], labels[i, :n], valid[i, :n] = b, l, True
    return targets, boxes, labels, valid


def assert_detections_match(got, want, score_atol, box_tol, pairs=None):
    """One image's detections (dicts of numpy ``scores``, ``boxes``, ``labels``; ``want`` may be
    torch) equal up to the order of near-tied scores: both sides sort by score, and two boxes
    whose scores differ by float32 rounding may come out in either order on the two sides.
    Returns the largest (score, box) differences of the pairs it matched; ``pairs`` (a list)
    receives them as (index in got, index in want)."""
    want = {k: np.asarray(v) for k, v in want.items()}
    assert len(got["scores"]) == len(want["scores"]) > 0
    np.testing.assert_allclose(got["scores"], want["scores"], atol=score_atol)
    score_err, box_err = float(np.abs(got["scores"] - want["scores"]).max()), 0.0
    free = np.ones(len(want["scores"]), bool)
    for i, (score, box, label) in enumerate(zip(got["scores"], got["boxes"], got["labels"])):
        peers = np.flatnonzero(free & (np.abs(want["scores"] - score) <= score_atol)
                               & (want["labels"] == label))
        assert len(peers), f"detection {i} (score {score}, label {label}) has no counterpart"
        dist = np.abs(want["boxes"][peers] - box).max(axis=1)
        j = peers[np.argmin(dist)]
        assert dist.min() <= box_tol, (
            f"detection {i}: box {box} vs the nearest of its near-tied peers {want['boxes'][j]}")
        free[j] = False
        if pairs is not None:
            pairs.append((i, int(j)))
        box_err = max(box_err, float(dist.min()))
    return score_err, box_err


def check_rcnn_losses(name, tmodel, model, variables, images, raw, branch=None,
                      check_proposals=None, min_positive=1):
    """An R-CNN's losses against torchvision's, torchvision handed our sampled anchors, our
    proposals and our sampled proposals (read from the loss call's intermediates); its backbone
    in eval mode (our frozen statistics), the RPN and RoI heads in training mode.  ``raw``:
    torchvision's targets in original pixels; ``branch``: None, "masks" or "keypoints" (the
    extra target our loss takes); ``check_proposals(ours, torchvision's)``: a further check."""
    timgs = [torch.from_numpy(im.transpose(2, 0, 1).copy()) for im in images]
    tmodel.train()
    tmodel.backbone.eval()
    try:
        with torch.no_grad():
            batch, targets = tmodel.transform(timgs, raw)
        x = batch.tensors.numpy().transpose(0, 2, 3, 1)
        g = 4
        boxes = np.zeros((2, g, 4), np.float32)
        labels, valid = np.zeros((2, g), np.int32), np.zeros((2, g), bool)
        extra = {"masks": np.zeros((2, g, *x.shape[1:3]), np.float32),
                 "keypoints": np.zeros((2, g, 17, 3), np.float32)}.get(branch)
        for i, t in enumerate(targets):
            k = len(t["boxes"])
            boxes[i, :k], labels[i, :k], valid[i, :k] = t["boxes"].numpy(), t["labels"], True
            if branch == "masks":
                hh, ww = t["masks"].shape[1:]
                extra[i, :k, :hh, :ww] = t["masks"].numpy()
            elif branch == "keypoints":
                extra[i, :k] = t["keypoints"].numpy()
        sizes = np.array(batch.image_sizes, np.int32)
        branch_kw = lambda a: {} if branch is None else {branch: a}  # noqa: E731
        got, state = jax.jit(lambda v, *a: model.apply(
            v, *a[:4], train=False, image_sizes=a[4], method="loss", rngs={"dropout": a[5]},
            mutable=["intermediates"], **branch_kw(a[6])))(
                variables, x, boxes, labels, valid, sizes, jax.random.key(0), extra)
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
            if check_proposals is not None:
                check_proposals(proposals, want_props)
            p = sample["positive"].shape[1] - g
            keep = lambda m, i: torch.from_numpy(np.concatenate(  # noqa: E731
                [m[i, :len(proposals[i])], m[i, p:p + len(targets[i]["boxes"])]]))
            tmodel.roi_heads.fg_bg_sampler = lambda _: (
                [keep(sample["positive"], i) for i in range(2)],
                [keep(sample["negative"], i) for i in range(2)])
            _, roi_losses = tmodel.roi_heads(feats, proposals, batch.image_sizes, targets)
    finally:
        tmodel.eval()
    want = {**rpn_losses, **roi_losses}
    assert set(got) == set(want)
    assert (sample["labels"][sample["valid"]] > 0).sum() >= min_positive
    errs = {k: abs(float(got[k]) / float(want[k]) - 1) for k in want}
    print(f"\n{name} losses: " + ", ".join(f"{k} {float(got[k]):.6g} (rel err {e:.2g})"
                                           for k, e in errs.items()))
    for k in want:
        np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=1e-5, err_msg=k)


def _tie(dets, i, nms_thresh, tol=1e-3):
    """Whether detection ``i`` of ``dets`` has a better-scored box of its class at an IoU within
    ``tol`` of the NMS threshold: a suppression float32 rounding decides either way."""
    better = (dets["labels"] == dets["labels"][i]) & (dets["scores"] > dets["scores"][i])
    if not better.any():
        return False
    iou = torchvision.ops.box_iou(torch.from_numpy(dets["boxes"][i:i + 1]),
                                  torch.from_numpy(dets["boxes"][better]))[0].numpy()
    return bool((np.abs(iou - nms_thresh) < tol).any())


def match_up_to_nms_ties(got, want, nms_thresh, score_atol=1e-4, box_tol=1e-2, pairs=None):
    """Detections equal one by one (label, score, box), except where a suppression sits at the
    NMS threshold to float32 rounding (random weights decode many near-identical boxes): such a
    box may be kept on one side only, and one more box then enters the top-k at the tail.
    Returns the largest (score, box) errors of the matched pairs; ``pairs`` (a list) receives
    them as (index in got, index in want)."""
    assert len(got["scores"]) == len(want["scores"]) > 0
    free = np.ones(len(got["scores"]), bool)
    score_err = box_err = 0.0
    missing = []
    for j in range(len(want["scores"])):
        ok = (free & (got["labels"] == want["labels"][j])
              & (np.abs(got["scores"] - want["scores"][j]) <= score_atol))
        dist = np.where(ok, np.abs(got["boxes"] - want["boxes"][j]).max(1), np.inf)
        i = int(np.argmin(dist))
        if dist[i] <= box_tol:
            free[i] = False
            if pairs is not None:
                pairs.append((i, j))
            score_err = max(score_err, abs(float(got["scores"][i] - want["scores"][j])))
            box_err = max(box_err, float(dist[i]))
        else:
            missing.append(j)
    extra = list(np.flatnonzero(free))
    flips = [j for j in missing if _tie(want, j, nms_thresh)]
    flips += [i for i in extra if _tie(got, i, nms_thresh)]
    tail = len(want["scores"]) - len(flips)
    for j in missing:
        assert j in flips or j >= tail, f"torchvision's detection {j} {want['scores'][j]} " \
            f"label {want['labels'][j]} box {want['boxes'][j]} has no counterpart"
    for i in extra:
        assert i in flips or i >= tail, f"our detection {i} {got['scores'][i]} label " \
            f"{got['labels'][i]} box {got['boxes'][i]} has no counterpart in torchvision's"
    assert len(flips) <= 2, f"{len(flips)} NMS ties: {flips}"
    return score_err, box_err
