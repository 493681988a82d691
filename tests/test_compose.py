"""Composed dense models: create_model(HEAD, backbone=NAME) on every registered classifier."""
import fnmatch

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvision as jv
from jaxvision.models._backbone import DENSE_FAMILIES
from jaxvision.registry import get_spec, list_models

CLASSIFIERS = [n for n in list_models() if get_spec(n).family not in DENSE_FAMILIES]
# backbones that take one input size only: refused by every dense head, naming why
REFUSED = {"vit_*": "position embedding", "maxvit_t": "relative-position tables"}
# built in the default run (every classifier: -m sweep); SqueezeNet stops at stride 16
SMALL = ["resnet18", "squeezenet1_1"]
SIZE = 128


def _refusal(name):
    return next((why for pat, why in REFUSED.items() if fnmatch.fnmatchcase(name, pat)), None)


def _maps(module, x):
    return module.backbone(x)


def check_builds(head, name):
    """The composed model's variables and outputs as shapes (jax.eval_shape: no compute); the
    neck reads exactly the maps the backbone returns, named and sized by its feature_info."""
    why = _refusal(name)
    if why:
        with pytest.raises(ValueError, match=f"backbone={name!r} cannot serve {head}: .*{why}"):
            jv.create_model(head, backbone=name, num_classes=5)
        return
    model = jv.create_model(head, backbone=name, num_classes=5)
    x = jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    maps = jax.eval_shape(lambda v, x: model.apply(v, x, method=_maps), v, x)
    info = {f.name: f for f in model.backbone.feature_info}
    maps = {k: maps[k] for k in info if k in maps}  # eval_shape sorted the keys
    assert len(maps) == len(model.body.model_kwargs["out_indices"])
    for k, m in maps.items():
        assert m.shape[-1] == info[k].channels, (k, m.shape, info[k])
    if head in ("retinanet", "fcos"):
        neck = v["params"]["neck"]
        got = [neck[f"inner_blocks_{i}_0"]["kernel"].shape[2] for i in range(len(maps))]
        assert got == [m.shape[-1] for m in maps.values()]
        out = jax.eval_shape(lambda v, x: model.apply(v, x, method="head_outputs"), v, x)
        n_anchors = sum(a.shape[0] for a in out["anchors"])
        assert out["cls_logits"].shape == (2, n_anchors, 5)
    else:
        out = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
        assert out["out"].shape == (2, SIZE, SIZE, 5)
    assert set(v["params"]["backbone"]) == set(
        jax.eval_shape(lambda x: jv.create_model(name, features_only=True, out_indices=(
            model.body.model_kwargs["out_indices"])).init(jax.random.key(0), x), x)["params"])


@pytest.mark.parametrize("head", ["retinanet", "deeplabv3"])
@pytest.mark.parametrize("name", SMALL + ["vit_b_16", "maxvit_t"])
def test_small_backbones_build_or_are_refused(head, name):
    check_builds(head, name)


@pytest.mark.sweep
@pytest.mark.parametrize("head", ["retinanet", "deeplabv3"])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_serves_or_is_refused(head, name):
    check_builds(head, name)


def test_a_composed_detector_runs_its_loss_and_postprocess():
    """SqueezeNet ends at stride 16: its C3, C4 + P6, P7 are four levels, anchored at 8..64."""
    model = jv.create_model("retinanet", backbone="squeezenet1_1", num_classes=3,
                            neck_kwargs={"out_channels": 16}, head_kwargs={"num_convs": 1})
    assert model.strides == (8, 16, 32, 64)
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    boxes = jnp.array([[[4.0, 4, 30, 30], [10, 20, 60, 50]]] * 2)
    labels, valid = jnp.array([[1, 2]] * 2), jnp.array([[True, False]] * 2)

    def run(x):
        v = model.init(jax.random.key(0), x)
        loss = model.apply(v, x, boxes, labels, valid, train=False, method="loss")
        return loss, model.apply(v, x)

    loss, det = jax.jit(run)(x)
    assert set(loss) == {"classification", "bbox_regression"}
    assert all(np.isfinite(float(l)) and float(l) > 0 for l in loss.values())
    assert det["boxes"].shape[0] == 2 and np.isfinite(np.asarray(det["scores"])).all()


def test_a_composed_segmenter_runs():
    model = jv.create_model("deeplabv3plus", backbone="squeezenet1_1", num_classes=3,
                            head_kwargs={"head_channels": 16})
    assert (model.low, model.high) == ("features_4", "features_12")  # strides 4 and 16
    x = jnp.ones((1, 64, 64, 3))
    out = jax.jit(lambda x: model.init_with_output(jax.random.key(0), x)[0])(x)["out"]
    assert out.shape == (1, 64, 64, 3) and np.isfinite(np.asarray(out)).all()


def test_output_stride_is_asked_of_the_backbone_or_refused():
    r50 = jv.create_model("deeplabv3", backbone="resnet50", num_classes=3, output_stride=8,
                          aux_loss=True)
    assert [f.reduction for f in r50.backbone.feature_info] == [2, 4, 8, 8, 8]
    assert (r50.aux, r50.high) == ("layer3", "layer4")
    assert r50.body.model_kwargs["replace_stride_with_dilation"] == (False, True, True)
    mb = jv.create_model("deeplabv3", backbone="mobilenet_v3_large", num_classes=3,
                         output_stride=16)
    assert max(f.reduction for f in mb.backbone.feature_info) == 16
    for name, os_, match in [("resnet18", 8, "BasicBlock ResNet cannot dilate"),
                             ("mobilenet_v3_large", 8, "dilates only its last stage"),
                             ("efficientnet_b0", 16, "efficientnet_b0' cannot dilate")]:
        with pytest.raises(ValueError, match=match):
            jv.create_model("deeplabv3", backbone=name, num_classes=3, output_stride=os_)


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "name its backbone"),
    (dict(backbone="retinanet_resnet50_fpn"), "is a fpn_detector model, not a classification"),
    (dict(backbone="resnet18", neck="pan"), r"neck must be one of \('fpn',\)"),
    (dict(backbone="resnet18", backbone_kwargs={"out_indices": (1,)}),
     r"backbone_kwargs may not set \['out_indices'\]"),
    (dict(backbone="resnet18", head_kwargs={"convs": 2}), r"head_kwargs: unknown \['convs'\]"),
    (dict(backbone="resnet18", out_indices=(7,)), "out_indices .* out of range"),
    (dict(backbone="resnet18", features_only=True), "features_only applies to its backbone"),
])
def test_bad_composition_is_refused_naming_the_argument(kwargs, match):
    with pytest.raises((ValueError, KeyError), match=match):
        jv.create_model("retinanet", num_classes=3, **kwargs)


def test_segmenter_maps_are_refused_when_miscounted():
    with pytest.raises(ValueError, match=r"low-level first.*2 of them here, got \(4,\)"):
        jv.create_model("deeplabv3plus", backbone="resnet18", num_classes=3, out_indices=(4,))
    with pytest.raises(ValueError, match="takes no neck"):
        jv.create_model("deeplabv3", backbone="resnet18", num_classes=3, neck="fpn")


def test_pretrained_backbone_equals_the_classifier_features(tmp_path):
    """torchvision's efficientnet_b0 (random weights, a .pth) into retinanet on efficientnet_b0:
    params/backbone and batch_stats/backbone are exactly what create_model(efficientnet_b0,
    pretrained=PATH, features_only=True) gets; resnet18's weights are refused naming the file."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path / "effb0.pth"
    torch.save(torchvision.models.efficientnet_b0().state_dict(), path)
    model, v = jv.create_model("retinanet", backbone="efficientnet_b0", num_classes=5,
                               pretrained_backbone=path)
    _, want = jv.create_model("efficientnet_b0", pretrained=path, features_only=True)
    for col in ("params", "batch_stats"):
        got = v[col]["backbone"]
        assert jax.tree.structure(got) == jax.tree.structure(dict(want[col]))
        jax.tree.map(np.testing.assert_array_equal, got, dict(want[col]))
    assert set(v["params"]) == {"backbone", "neck", "head"}
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="r18.pth -> backbone \\(efficientnet_b0\\)"):
        jv.pretrained_backbone(model, v, tmp_path / "r18.pth")


def test_freezing_follows_the_composed_backbones_own_stages():
    from jaxvision.train import freeze

    model = jv.create_model("fcos", backbone="efficientnet_b0", num_classes=3,
                            trainable_backbone_layers=2)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
    paths = jax.tree.leaves(freeze.param_paths(params))

    def frozen(**kw):
        cfg = freeze.default_freeze_config()
        cfg.update(kw)
        mask = jax.tree.leaves(freeze.trainable_mask(params, cfg, "fcos", model))
        return {p for p, t in zip(paths, mask) if not t}

    own = jv.create_model("efficientnet_b0").stage_layout  # stem features_0, stages 1..7
    assert model.stage_layout.num_stages == own.num_stages == 7
    # trainable_backbone_layers=2: stages 6 and 7 train; the stem and stages 1..5 are frozen
    want = {p for p in paths if p.startswith("backbone/") and
            (own.stage_of(p[len("backbone/"):]) or 0) <= 5 and
            own.stage_of(p[len("backbone/"):]) is not None}
    assert frozen() == want and want
    assert frozen(linear_probe=True) == {p for p in paths if p.startswith("backbone/")}
    with pytest.raises(ValueError, match=r"trainable_backbone_layers must be in \[0, 8\]"):
        jv.create_model("fcos", backbone="efficientnet_b0", trainable_backbone_layers=9
                        ).frozen_stages
