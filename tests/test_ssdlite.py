"""ssdlite320_mobilenet_v3_large against torchvision on the same random weights: parameter
count, strict conversion, the fixed-size preprocessing of two images of different sizes, raw
head outputs, final detections mapped back to each image, the train-mode loss with its updated
BatchNorm statistics, and the stages that trainable_backbone_layers freezes."""
import copy
import functools

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import ssdlite as tv_ssdlite

import jax
import jax.numpy as jnp

import jaxvision as jv
from jaxvision.convert import torchvision as tv_convert
from jaxvision.models.detection import ssdlite, transform

from det_helpers import DEFAULT_IMAGES, assert_detections_match, predict_both, random_targets
from family_checks import frozen
from tv_parity import assert_no_zero_tensor, fill_zero_params_, max_err, randomize_

NAME = "ssdlite320_mobilenet_v3_large"
IMAGES = [np.random.default_rng(0).random((240, 320, 3)).astype(np.float32),
          np.random.default_rng(1).random((300, 200, 3)).astype(np.float32)]
ERRORS = {}  # measured errors, printed when the module ends (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def _print_errors():
    yield
    print("\nssdlite320 max errors:", {k: f"{v:.3g}" for k, v in ERRORS.items()})


class _Net(torch.nn.Module):
    """Backbone + head, so that one calibration forward sets every BatchNorm's statistics."""

    def __init__(self, ssd):
        super().__init__()
        self.backbone, self.head = ssd.backbone, ssd.head

    def forward(self, x):
        return self.head(list(self.backbone(x).values()))


@functools.cache
def _param_shapes():
    return jv.api.init_variables(jv.create_model(NAME), NAME, abstract=True)["params"]


def _torch_pair():
    torch.manual_seed(0)
    tmodel = tv_ssdlite.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                      num_classes=6)
    fill_zero_params_(tmodel)  # head and squeeze-excitation biases start at zero
    randomize_(_Net(tmodel), calib_size=(320, 320))
    assert_no_zero_tensor(tmodel.state_dict())
    model = jv.create_model(NAME, num_classes=6)
    variables, report = jv.load_pretrained(NAME, tmodel.state_dict(), model=model,
                                           return_report=True)
    return tmodel.eval(), model, variables, report


def _torch_run(tmodel, targets):
    """torchvision's detections of IMAGES with what its transform, head and default boxes
    produced on the way (hooks: one forward), then its train-mode loss on that batch."""
    seen = {}
    hooks = [getattr(tmodel, m).register_forward_hook(
        lambda mod, args, out, m=m: seen.setdefault(m, out))
        for m in ("transform", "head", "anchor_generator")]
    with torch.no_grad():
        seen["detections"] = tmodel([torch.from_numpy(im.transpose(2, 0, 1).copy())
                                     for im in IMAGES])
    for h in hooks:
        h.remove()
    batch, anchors = seen["transform"][0], seen["anchor_generator"]
    matched = [tmodel.proposal_matcher(torchvision.ops.box_iou(t["boxes"], a))
               for t, a in zip(targets, anchors)]
    before = copy.deepcopy(tmodel.state_dict())
    tmodel.train()
    with torch.no_grad():  # batch statistics; the running ones move
        out = tmodel.head(list(tmodel.backbone(batch.tensors).values()))
        seen["loss"] = tmodel.compute_loss(targets, out, anchors, matched)
    seen["stats_after"] = copy.deepcopy(tmodel.state_dict())
    tmodel.load_state_dict(before)
    tmodel.eval()
    return seen


@pytest.fixture(scope="module")
def run():
    tmodel, model, variables, report = _torch_pair()
    targets, boxes, labels, valid = random_targets(np.random.default_rng(3), (3, 2), 5, 200, 16,
                                                   100)
    want = _torch_run(tmodel, targets)
    batch = want["transform"][0]

    @jax.jit  # one compile: detections (with the head's outputs on the way) and the loss
    def ours(v, x, sizes, boxes, labels, valid):
        dets, inter = model.apply(v, x, image_sizes=sizes, mutable=["intermediates"],
                                  capture_intermediates=lambda m, method: m.name == "head")
        return (dets, inter["intermediates"]["head"]["__call__"][0],
                model.apply(v, x, boxes, labels, valid, method="loss", mutable=["batch_stats"]))

    got = jax.device_get(ours(variables, batch.tensors.numpy().transpose(0, 2, 3, 1),
                              np.asarray(batch.image_sizes, np.int32), boxes, labels, valid))
    return dict(tmodel=tmodel, model=model, variables=variables, report=report, want=want,
                got=got)


def test_param_count():
    with torch.device("meta"):
        tmodel = tv_ssdlite.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    n_ours = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(_param_shapes()))
    assert n_ours == sum(p.numel() for p in tmodel.parameters())
    assert n_ours == jv.model_info(NAME).num_params == 3_440_060  # torchvision's weights' meta


@pytest.mark.sweep  # two more traces of the model; the default layout is tested above
@pytest.mark.parametrize("kwargs", [dict(reduced_tail=False), dict(width_mult=0.75)])
def test_param_count_of_variants(kwargs):
    """The full tail (an ImageNet backbone's) and a narrower backbone, assembled from
    torchvision's parts: its builder reaches reduced_tail=False only by downloading weights."""
    norm = functools.partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)
    with torch.device("meta"):
        body = torchvision.models.mobilenet_v3_large(norm_layer=norm,
                                                     **{"reduced_tail": True, **kwargs})
        extractor = tv_ssdlite._mobilenet_extractor(body, 6, norm)
        channels = [extractor.features[0][-1].out_channels,
                    extractor.features[1][-1].out_channels]
        channels += [block[-1].out_channels for block in extractor.extra]
        head = tv_ssdlite.SSDLiteHead(channels, [6] * 6, 91, norm)
    n_torch = sum(p.numel() for m in (extractor, head) for p in m.parameters())
    model = jv.create_model(NAME, **kwargs)
    shapes = jv.api.init_variables(model, NAME, abstract=True)["params"]
    assert sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes)) == n_torch


def test_strict_conversion_uses_every_tensor(run):
    r = run["report"]
    assert r.ok
    assert len(r.loaded) == sum(not k.endswith("num_batches_tracked")
                                for k in run["tmodel"].state_dict())


def test_preprocessing_equals_torchvision(run):
    info = jv.model_info(NAME)
    batch = run["want"]["transform"][0]
    ours, sizes = transform.prepare(IMAGES, info.mean, info.std, 0, 0, info.input_size, 1)
    ERRORS["preprocessing"] = max_err(ours, batch.tensors.numpy().transpose(0, 2, 3, 1))
    assert ERRORS["preprocessing"] < 2e-5
    assert [tuple(s) for s in sizes] == [tuple(s) for s in batch.image_sizes] == [(320, 320)] * 2


def test_head_outputs_and_default_boxes_equal(run):
    _, head, _ = run["got"]
    for k in ("cls_logits", "bbox_regression"):
        ERRORS[k] = max_err(head[k], run["want"]["head"][k].numpy())
        assert ERRORS[k] < 1e-4, k
    grids = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    np.testing.assert_array_equal(np.concatenate(ssdlite.DEFAULT_BOXES((320, 320), grids)),
                                  run["want"]["anchor_generator"][0].numpy())


def _assert_same_detections(got, want, score_tol=1e-5, box_tol=1e-3):
    """Both sorted by score; two detections whose scores differ by less than ``score_tol``
    may come in either order (they do: float32 rounding decides)."""
    gs, gb, gl = got["scores"], got["boxes"], got["labels"]
    ws, wb, wl = (want[k].numpy() for k in ("scores", "boxes", "labels"))
    assert len(gs) == len(ws) > 0
    ERRORS["scores"] = max(ERRORS.get("scores", 0), max_err(gs, ws))
    assert ERRORS["scores"] < score_tol
    free = np.ones(len(ws), bool)
    for i in range(len(gs)):
        err = np.abs(wb - gb[i]).max(1)
        ok = free & (np.abs(ws - gs[i]) < score_tol) & (wl == gl[i]) & (err < box_tol)
        assert ok.any(), f"detection {i} (label {gl[i]}, score {gs[i]}) has no twin"
        j = np.flatnonzero(ok)[np.argmin(np.abs(np.flatnonzero(ok) - i))]
        free[j] = False
        ERRORS["boxes"] = max(ERRORS.get("boxes", 0), float(err[j]))


def test_detections_equal_torchvision(run):
    model, tmodel = run["model"], run["tmodel"]
    settings = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")
    assert [getattr(model, k) for k in settings] == [getattr(tmodel, k) for k in settings]
    dets, _, _ = run["got"]
    got = transform.to_original(dets, [(320, 320)] * 2, [im.shape[:2] for im in IMAGES])
    for g, w in zip(got, run["want"]["detections"]):
        _assert_same_detections(g, w)


def test_predict_equals_torchvision_on_photo_shapes(run):
    """detection.predict from the module alone: its own mean/std and fixed 320x320 resize, and
    the boxes mapped back to 480x640 and 333x500 as torchvision's transform does."""
    got, want = predict_both(run["tmodel"], run["model"], run["variables"], DEFAULT_IMAGES)
    errs = [assert_detections_match(g, w, score_atol=1e-5, box_tol=2e-3)
            for g, w in zip(got, want)]
    ERRORS["photo shapes scores"], ERRORS["photo shapes boxes"] = np.max(errs, axis=0)


def test_train_loss_and_statistics_equal(run):
    _, _, (loss, updates) = run["got"]
    for k in ("bbox_regression", "classification"):
        want = float(run["want"]["loss"][k])
        ERRORS[f"{k} loss (relative)"] = abs(float(loss[k]) - want) / abs(want)
        assert ERRORS[f"{k} loss (relative)"] < 1e-5, k
    theirs = jv.load_pretrained(NAME, run["want"]["stats_after"],
                                model=run["model"])["batch_stats"]
    ERRORS["running stats"] = max(max_err(a, b) for a, b in zip(
        jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(theirs)))
    assert ERRORS["running stats"] < 1e-4


@pytest.mark.parametrize("k", range(7))
def test_trainable_backbone_layers_freeze_torchvisions_layers(k):
    norm = functools.partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)
    with torch.device("meta"):
        body = torchvision.models.mobilenet_v3_large(norm_layer=norm, reduced_tail=True)
        extractor = tv_ssdlite._mobilenet_extractor(body, k, norm)
    want = {"backbone/" + "/".join(tv_convert.module_path(n)[0]) for n, p in
            extractor.named_parameters() if not p.requires_grad}
    model = jv.create_model(NAME, trainable_backbone_layers=k)
    got = {p.rsplit("/", 1)[0] for p in frozen(NAME, _param_shapes(), model,
                                               frozen_stages=model.frozen_stages)}
    assert got == want


def test_bad_input_is_named():
    model = jv.create_model(NAME, num_classes=3)
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 320, 320))))
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        jax.eval_shape(lambda: jv.create_model(NAME, num_classes=1).init(
            jax.random.key(0), jnp.zeros((1, 320, 320, 3))))
    with pytest.raises(ValueError, match=r"trainable_backbone_layers must be in \[0, 6\]"):
        jv.create_model(NAME, trainable_backbone_layers=7).frozen_stages
    with pytest.raises(ValueError, match="is a detector"):
        jv.create_model(NAME, features_only=True)
