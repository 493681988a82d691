"""yolo_cspdarknet53: shapes, parameter arithmetic, decoding, assignment, loss, post-processing
and a short training run of the small variant on the ``shapes`` data."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvision as jv
from jaxvision.data.shapes import ShapesSource
from jaxvision.heads import yolo as head
from jaxvision.models.darknet import Darknet

NAME = "yolo_cspdarknet53"
SMALL = dict(width_mult=0.125, depth_mult=0.1, anchor_scale=64 / 608)
# XLA:CPU's full backend optimisation is most of this file's time (the small model's train
# step, measured on a loaded 2-core machine: compile ~100 s at the default level, 62 s at 1,
# 33 s at 0 but then 1.5 s a step instead of 0.25); tiny one-off functions take level 0


def _compiled(fn, *args, level=0):
    return jax.jit(fn).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": level})


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract(model, x, **kw):
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kw), x)


def test_output_shapes_per_scale_square_and_not():
    for model, size in ((jv.create_model(NAME), (608, 608)),
                        (jv.create_model(NAME, num_classes=4, **SMALL), (64, 96))):
        x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
        out, v = jax.eval_shape(lambda x: model.init_with_output(
            jax.random.key(0), x, method="head_outputs"), x)
        k = 5 + model.num_classes
        assert [p.shape for p in out["preds"]] == [
            (2, size[0] // s, size[1] // s, 3, k) for s in (8, 16, 32)]
        if size == (608, 608):
            continue  # tracing the full model's post-processing adds seconds, not coverage
        dets = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
        assert {n: d.shape for n, d in dets.items()} == {
            "boxes": (2, 100, 4), "scores": (2, 100), "labels": (2, 100), "count": (2,)}


def _cbn(k, cin, cout):  # conv without bias + BatchNorm's scale and bias
    return k * k * cin * cout + 2 * cout


def _five(cin, c):
    return _cbn(1, cin, c) + 2 * (_cbn(3, c, 2 * c) + _cbn(1, 2 * c, c))


def test_param_count_layer_by_layer():
    # CSPDarknet-53: stage 1 doubles the width inside (half-width bottlenecks), later stages
    # run full-width blocks on half the channels
    backbone, cin = _cbn(3, 3, 32), 32
    for i, (c, d) in enumerate(zip((64, 128, 256, 512, 1024), (1, 2, 8, 8, 4))):
        backbone += _cbn(3, cin, c)
        if i == 0:
            backbone += (_cbn(1, c, 2 * c) + d * (_cbn(1, c, c // 2) + _cbn(3, c // 2, c))
                         + _cbn(1, c, c) + _cbn(1, 2 * c, c))
        else:
            h = c // 2
            backbone += (_cbn(1, c, c) + d * (_cbn(1, h, h) + _cbn(3, h, h)) + _cbn(1, h, h)
                         + _cbn(1, c, c))
        cin = c
    spp = (_cbn(1, 1024, 512) + _cbn(3, 512, 1024) + _cbn(1, 1024, 512)
           + _cbn(1, 4 * 512, 512) + _cbn(3, 512, 1024))
    neck = (_cbn(1, 1024, 512)  # the third post-SPP conv
            + _cbn(1, 512, 256) + _cbn(1, 512, 256) + _five(512, 256)  # top-down to C4
            + _cbn(1, 256, 128) + _cbn(1, 256, 128) + _five(256, 128)  # to C3
            + _cbn(3, 128, 256) + _five(512, 256)  # bottom-up to C4
            + _cbn(3, 256, 512) + _five(1024, 512))  # to C5
    heads = sum(_cbn(3, c, 2 * c) + 2 * c * 255 + 255 for c in (128, 256, 512))
    model = jv.create_model(NAME)
    variables = jv.api.init_variables(model, NAME, abstract=True)
    got = {k: _count(v) for k, v in variables["params"].items()}
    assert got == {"backbone": backbone, "spp": spp, "neck": neck, "head": heads}
    # the backbone is timm's cspdarknet53 without its 1000-class fc
    assert backbone == jv.model_info("cspdarknet53").num_params - (1024 * 1000 + 1000)
    # 64,363,101: YOLOv4's CSPDarknet53-SPP-PAN at 80 classes (the paper's "~64M")
    assert sum(got.values()) == jv.model_info(NAME).num_params == 64_363_101
    # darknet's yolov4.weights holds a 20-byte header, then float32 kernels, head biases and
    # per BatchNorm channel its bias, scale, mean and variance: 257,717,640 bytes
    stats = _count(variables["batch_stats"])
    assert 20 + 4 * (sum(got.values()) + stats) == 257_717_640


def test_decode_hand_made_prediction():
    anchors = np.array([[10, 13], [16, 30], [33, 23]], np.float32)
    pred = np.zeros((1, 4, 5, 3, 6), np.float32)
    pred[0, 1, 2, 1, :4] = [0.0, math.log(3.0), math.log(2.0), 0.0]  # sigmoid(log 3) = 0.75
    box = np.asarray(head.decode(jnp.asarray(pred), jnp.asarray(anchors), 8))[0, 1, 2, 1]
    cx, cy, w, h = (0.5 + 2) * 8, (0.75 + 1) * 8, 2 * 16, 30
    np.testing.assert_allclose(box, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6)


def test_assignment_picks_best_shape_anchor_at_centre_cell():
    anchors = head.anchor_table()
    # 60x44 centred at (100, 200): closest in shape to (62, 45), anchor 1 of stride 16
    boxes = jnp.array([[70.0, 178, 130, 222], [5, 5, 300, 300], [0, 0, 0, 0]])
    valid = jnp.array([True, False, False])  # a padded row with a real-looking box
    grids = [(320 // s, 320 // s) for s in head.STRIDES]
    m = _compiled(lambda b, v: head.assign(b, v, jnp.asarray(anchors), grids), boxes, valid)(
        boxes, valid)
    assert [int((x >= 0).sum()) for x in m] == [0, 1, 0]
    assert int(m[1][200 // 16, 100 // 16, 1]) == 0


def _perfect(boxes, labels, valid, anchors, num_classes=3):
    """Predictions that decode to each ground truth at the anchor YOLOv3 assigns it (best shape
    IoU of the 9, at the cell holding its centre), objectness -12 everywhere else."""
    preds = [np.full((2, 64 // s, 64 // s, 3, 5 + num_classes), -12.0, np.float32)
             for s in head.STRIDES]
    flat = anchors.reshape(9, 2)
    for n, m in zip(*np.nonzero(valid)):
        b = boxes[n, m]
        wh, centre = b[2:] - b[:2], (b[:2] + b[2:]) / 2
        inter = np.minimum(wh, flat).prod(-1)
        best = int(np.argmax(inter / (wh.prod() + flat.prod(-1) - inter)))
        s, a = divmod(best, 3)
        x, y = (centre // head.STRIDES[s]).astype(int)
        frac = centre / head.STRIDES[s] - [x, y]
        preds[s][n, y, x, a, :5] = [*np.log(frac / (1 - frac)), *np.log(wh / flat[best]), 12]
        preds[s][n, y, x, a, 5 + labels[n, m]] = 12.0
    return preds


def test_loss_padding_perfect_and_random():
    anchors = head.anchor_table(64 / 608)
    boxes = np.array([[[4.0, 6, 30, 40], [30, 20, 62, 60], [0, 0, 0, 0]],
                      [[10, 10, 26, 22], [1, 2, 3, 4], [0, 0, 0, 0]]], np.float32)
    labels = np.array([[1, 2, 0], [0, 0, 0]], np.int32)
    valid = np.array([[True, True, False], [True, False, False]])
    perfect = _perfect(boxes, labels, valid, anchors)
    loss = _compiled(lambda p, b, l, v: head.yolo_loss(p, anchors, b, l, v, 3),
                     perfect, boxes, labels, valid)
    good = loss(perfect, boxes, labels, valid)
    # logit -12 leaves BCE 6e-6 per negative anchor; objectness sums the batch's ~500 of them
    # per positive, so "perfect" sits near 1e-3 there and below 1e-4 elsewhere
    assert float(good["objectness"]) < 2e-3, good
    assert float(good["bbox_regression"]) < 1e-4 and float(good["classification"]) < 1e-4, good
    rng = np.random.default_rng(1)
    noisy = [rng.normal(size=p.shape).astype(np.float32) for p in perfect]
    bad = loss(noisy, boxes, labels, valid)
    for k in good:
        assert float(bad[k]) > 10 * float(good[k]) + 0.01, (k, bad, good)
    # padded rows holding real-looking boxes and labels change nothing
    garbage = loss(noisy, np.where(valid[..., None], boxes, [8.0, 8, 50, 50]),
                   np.where(valid, labels, 2), valid)
    for k in bad:
        assert float(garbage[k]) == float(bad[k]), k


def test_postprocess_threshold_nms_and_padding():
    anchors = head.anchor_table(64 / 608)
    preds = [np.full((1, 64 // s, 64 // s, 3, 7), -12.0, np.float32) for s in head.STRIDES]
    # stride 8, every box 20x20 px: two near-twins of class 0, a class-1 box overlapping them
    # (IoU 0.64 > 0.45) and a faint one (score sigmoid(-4) < 0.05)
    for y, x, a, tx, obj, cls in ((2, 2, 0, 0.0, 3.0, 0), (2, 2, 1, 0.1, 2.0, 0),
                                  (2, 3, 0, -3.0, 2.5, 1), (6, 6, 0, 0.0, -4.0, 0)):
        tw, th = np.log(20.0 / anchors[0, a])
        preds[0][0, y, x, a, :5] = [tx, 0.0, tw, th, obj]
        preds[0][0, y, x, a, 5 + cls] = 12.0
    post = _compiled(lambda p, s: head.yolo_postprocess(p, anchors, s, 0.05, 0.45, 5, 50),
                     preds, np.array([[64, 64]]))
    out = post(preds, np.array([[64, 64]]))
    assert {k: v.shape for k, v in out.items()} == {
        "boxes": (1, 5, 4), "scores": (1, 5), "labels": (1, 5), "count": (1,)}
    n = int(out["count"][0])
    scores, labels = np.asarray(out["scores"][0]), np.asarray(out["labels"][0])
    # the faint box is dropped, the weaker class-0 twin suppressed, the class-1 box kept
    # (NMS is class-wise)
    assert n == 2 and labels[:n].tolist() == [0, 1]
    np.testing.assert_allclose(scores[:n], jax.nn.sigmoid(jnp.array([3.0, 2.5])) *
                               jax.nn.sigmoid(12.0), rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, 0], [10, 10, 30, 30], atol=1e-4)
    assert (labels[n:] == -1).all() and (scores[n:] == 0).all()
    assert (np.asarray(out["boxes"][0, n:]) == 0).all()


def test_freezing_layout_and_bad_input():
    model = jv.create_model(NAME, frozen_stages=2)
    assert model.frozen_stages == 2
    lay = model.stage_layout
    assert lay.stage_of("backbone/stem/conv1/conv/kernel") == 0
    assert lay.stage_of("backbone/stages_4/conv_down/bn/scale") == 5
    assert lay.stage_of("head/head_0_pred/kernel") is None
    x = jax.ShapeDtypeStruct((1, 64, 80, 3), jnp.float32)
    with pytest.raises(ValueError, match="multiples of 32"):
        _abstract(jv.create_model(NAME, **SMALL), x)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        _abstract(jv.create_model(NAME, num_classes=0), jax.ShapeDtypeStruct((1, 64, 64, 3),
                                                                             jnp.float32))
    with pytest.raises(ValueError, match="features_only"):
        jv.create_model(NAME, features_only=True)
    with pytest.raises(ValueError, match=r"9 positive \(w, h\) pairs"):
        head.anchor_table(-1.0)
    with pytest.raises(ValueError, match="channels must be 5 even widths"):
        _abstract(Darknet(channels=(8, 16, 32, 64)), jax.ShapeDtypeStruct((1, 32, 32, 3),
                                                                          jnp.float32))


def _shapes_batch(n, m=3, width=96):
    """``n`` 64x64 shapes images padded to 64 x ``width`` (the padded-batch contract) and
    their boxes padded to ``m`` rows."""
    src = ShapesSource(n, 4, 64)
    x = np.zeros((n, 64, width, 3), np.float32)
    boxes, labels = np.zeros((n, m, 4), np.float32), np.zeros((n, m), np.int32)
    valid = np.zeros((n, m), bool)
    for i in range(n):
        e = src[i]
        x[i, :, :64] = e["image"] / 255.0
        k = int(e["num_boxes"])
        boxes[i, :k], labels[i, :k], valid[i, :k] = e["boxes"][:k], e["classes"][:k], True
    return x, boxes, labels, valid


def _train(init, loss_fn, steps=30, lr=3e-3):
    """Adam on ``loss_fn(params, stats) -> (losses, stats)`` from ``init``'s variables, one
    compiled step; the total loss of every step."""
    v = _compiled(init)()
    tx = optax.adam(lr)

    def step(params, stats, opt):
        def total(p):
            losses, stats_ = loss_fn(p, stats)
            return sum(losses.values()), stats_

        (loss, stats), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    params, stats, opt = v["params"], v["batch_stats"], tx.init(v["params"])
    step = _compiled(step, params, stats, opt, level=1)
    losses = []
    for _ in range(steps):
        params, stats, opt, loss = step(params, stats, opt)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    return losses


def test_head_and_loss_train_on_shapes():
    # the head alone on the images average-pooled to each stride: the jitted step, the loss
    # and its gradients in seconds (the whole model's step is the sweep test below)
    x, boxes, labels, valid = _shapes_batch(8)
    n, h, w, _ = x.shape
    feats = [x.reshape(n, h // s, s, w // s, s, 3).mean((2, 4)) for s in head.STRIDES]
    net = head.YOLOHead(4)
    anchors = head.anchor_table(64 / 608)

    def loss_fn(p, stats):
        preds, new = net.apply({"params": p, "batch_stats": stats}, feats, True,
                               mutable=["batch_stats"])
        return head.yolo_loss(preds, anchors, boxes, labels, valid, 4), new["batch_stats"]

    losses = _train(lambda: net.init(jax.random.key(0), feats), loss_fn, lr=2e-2)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


@pytest.mark.sweep
def test_small_variant_trains_on_shapes():
    # 100-150 s on this loaded 2-core machine (52-55 s of CPU), mostly XLA compiling the step
    model = jv.create_model(NAME, num_classes=4, **SMALL)
    x, boxes, labels, valid = _shapes_batch(8)

    def loss_fn(p, stats):
        losses, new = model.apply({"params": p, "batch_stats": stats}, x, boxes, labels, valid,
                                  train=True, method="loss", mutable=["batch_stats"])
        return losses, new["batch_stats"]

    # an RngBitGenerator key: threefry makes XLA:CPU compile the initialisers for a minute
    losses = _train(lambda: model.init(jax.random.key(0, impl="unsafe_rbg"), x[:1]), loss_fn)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
