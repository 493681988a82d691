"""Composed dense models: create_model(HEAD, backbone=NAME) on every registered classifier."""
import fnmatch

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvision as jv
from random_variables import random_variables
from jaxvision.models._backbone import DENSE_FAMILIES
from jaxvision.registry import get_spec, list_models

CLASSIFIERS = [n for n in list_models() if get_spec(n).family not in DENSE_FAMILIES]
HEADS = ["retinanet", "fcos", "ssd", "yolo", "fcn", "deeplabv3", "deeplabv3plus", "lraspp",
         "deeplabv1", "deeplabv2"]
# the backbones a head cannot stand on, and why (every other pair builds); ViT and MaxViT take
# one input size, so a dense model on them is built and run at it (model.image_size)
REFUSED = {"yolo": {"squeezenet1_*": r"strides \(8, 16, 32\).*at strides \(8, 16\)",
                    "vit_*": r"strides \(8, 16, 32\).*at strides \(\d+,\)"},
           "deeplabv3plus": {"vit_*": "has no stride-4 map"},
           "lraspp": {"vit_*": "has no stride-8 map"}}
SIZE = 128


def _refusal(head, name):
    return next((why for pat, why in REFUSED.get(head, {}).items()
                 if fnmatch.fnmatchcase(name, pat)), None)


def _maps(module, x):
    return module.backbone(x)


def _in_channels(kernel):
    return kernel.shape[2]


def reader_channels(head, model, params) -> list:
    """The input width of the first layer reading each backbone map, in feature_info order:
    what the neck / head was built for."""
    n = len(model.body.model_kwargs["out_indices"])
    if head in ("retinanet", "fcos"):
        neck = params["neck"]
        if "inner_blocks_0_0" in neck:  # FPN
            return [_in_channels(neck[f"inner_blocks_{i}_0"]["kernel"]) for i in range(n)]
        first = sorted(k for k in neck if k.startswith("simfp_"))[0]  # simple pyramid
        return [_in_channels(neck[first]["kernel"])]
    if head == "ssd":
        lists = params["head"]["classification_head"]
        return [_in_channels(lists[f"module_list_{i}"]["kernel"]) for i in range(n)]
    if head == "yolo":
        neck = params["neck"]
        return [_in_channels(neck["lateral0_0"]["kernel"]), _in_channels(
            neck["lateral1_0"]["kernel"]), _in_channels(params["spp"]["pre0_0"]["kernel"])]
    c = params.get("classifier", {})
    if head == "deeplabv3plus":
        return [_in_channels(c["project_0"]["kernel"]), _in_channels(
            c["aspp"]["convs_0_0"]["kernel"])]
    if head == "lraspp":
        return [_in_channels(c["low_classifier"]["kernel"]), _in_channels(c["cbr_0"]["kernel"])]
    if head in ("deeplabv1", "deeplabv2"):
        first = "branch_0_fc6" if "branch_0_fc6" in c else "branch_0_fc8"
        return [_in_channels(c[first]["kernel"])]
    top = params["classifier_0"]  # fcn's 3x3 conv, deeplabv3's ASPP
    return [_in_channels(top["kernel"] if head == "fcn" else top["convs_0_0"]["kernel"])]


def check_builds(head, name):
    """The composed model's variables and outputs as shapes (jax.eval_shape: no compute); the
    neck / head reads exactly the maps the backbone returns, named and sized by its
    feature_info."""
    why = _refusal(head, name)
    if why:
        with pytest.raises(ValueError, match=f"backbone={name!r}.*{why}"):
            jv.create_model(head, backbone=name, num_classes=5)
        return
    model = jv.create_model(head, backbone=name, num_classes=5)
    size = model.image_size or (SIZE, SIZE)
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    maps = jax.eval_shape(lambda v, x: model.apply(v, x, method=_maps), v, x)
    info = {f.name: f for f in model.backbone.feature_info}
    maps = {k: maps[k] for k in info if k in maps}  # eval_shape sorted the keys
    assert len(maps) == len(model.body.model_kwargs["out_indices"])
    for k, m in maps.items():
        assert m.shape[-1] == info[k].channels, (k, m.shape, info[k])
    read = reader_channels(head, model, v["params"])
    assert read == [m.shape[-1] for m in maps.values()][-len(read):], (read, maps)
    if head in ("retinanet", "fcos", "ssd"):
        out = jax.eval_shape(lambda v, x: model.apply(v, x, method="head_outputs"), v, x)
        anchors = out["anchors"]
        n_anchors = (anchors.shape[0] if head == "ssd" else sum(a.shape[0] for a in anchors))
        assert out["cls_logits"].shape == (2, n_anchors, 5)
    elif head == "yolo":
        out = jax.eval_shape(lambda v, x: model.apply(v, x, method="head_outputs"), v, x)
        assert [p.shape for p in out["preds"]] == [
            (2, size[0] // s, size[1] // s, 3, 10) for s in (8, 16, 32)]
    else:
        out = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
        assert out["out"].shape == (2, *size, 5)
    assert set(v["params"]["backbone"]) == set(
        jax.eval_shape(lambda x: jv.create_model(name, **model.body.model_kwargs).init(
            jax.random.key(0), x), x)["params"])


@pytest.mark.parametrize("head,name", [
    (h, n) for h in ("retinanet", "deeplabv3") for n in ("resnet18", "squeezenet1_1")] + [
    ("ssd", "squeezenet1_1"), ("deeplabv1", "squeezenet1_1"), ("deeplabv2", "squeezenet1_1"),
    ("yolo", "squeezenet1_1"), ("lraspp", "vit_b_16")])
def test_small_backbones_build_or_are_refused(head, name):
    check_builds(head, name)


@pytest.mark.sweep
@pytest.mark.parametrize("head", HEADS)
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
    (dict(backbone="resnet18", neck="pan"), r"neck must be one of \('fpn', 'simple_pyramid'\)"),
    (dict(backbone="resnet18", neck="simple_pyramid", neck_kwargs={"extra_blocks": None}),
     r"neck_kwargs \(simple_pyramid\): unknown \['extra_blocks'\]"),
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


def _detect(model, x, boxes, labels, valid):
    """The loss (eval mode) jitted once on random variables drawn from the shapes (a jitted
    init compiles longer than the loss); the presets' tests cover each post-processing."""
    loss = jax.jit(lambda v, x: model.apply(v, x, boxes, labels, valid, train=False,
                                            method="loss"))(random_variables(model, x), x)
    assert all(np.isfinite(float(l)) and float(l) > 0 for l in loss.values()), loss
    return loss


BOXES = jnp.array([[[4.0, 4, 30, 30], [10, 20, 60, 50]]] * 2)
VALID = jnp.array([[True, False]] * 2)


def test_a_composed_ssd_runs_its_loss():
    """SqueezeNet's C3, C4 (strides 8, 16) + four extra stride-2 blocks: six maps, as SSD300."""
    model = jv.create_model("ssd", backbone="squeezenet1_1", num_classes=3,
                            head_kwargs={"extra_channels": (32, 16, 16, 16)})
    assert model.body.model_kwargs["out_indices"] == (2, 3)
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    loss = _detect(model, x, BOXES, jnp.array([[1, 2]] * 2), VALID)
    assert set(loss) == {"classification", "bbox_regression"}
    with pytest.raises(ValueError, match="ssd: takes no neck"):
        jv.create_model("ssd", backbone="squeezenet1_1", neck="fpn")


def test_a_composed_yolo_runs_its_loss():
    """ResNet-18's layer2..layer4 (strides 8, 16, 32) under SPP + a narrow PAN."""
    model = jv.create_model("yolo", backbone="resnet18", num_classes=3,
                            neck_kwargs={"channels": (16, 24, 32)}, anchor_scale=64 / 608)
    assert [model.backbone.feature_info[i].reduction
            for i in model.body.model_kwargs["out_indices"]] == [8, 16, 32]
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    loss = _detect(model, x, BOXES, jnp.array([[0, 2]] * 2), VALID)
    assert set(loss) == {"objectness", "bbox_regression", "classification"}
    assert model.stage_layout.head == r"(spp|neck|head)/"
    with pytest.raises(ValueError, match=r"yolo: neck must be one of \('spp\+pan', 'pan'\)"):
        jv.create_model("yolo", backbone="resnet18", neck="fpn")


def test_retinanet_on_a_vit_stands_on_the_simple_pyramid():
    """A one-stride backbone gets ViTDet's simple pyramid by default (strides 8, 16, 32 from the
    stride-16 map, then P6, P7); the detector takes its backbone's one input size (image_size),
    and another size is refused by the ViT, naming image_size."""
    tiny = dict(image_size=64, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64)
    model = jv.create_model("retinanet", backbone="vit_b_16", num_classes=3,
                            backbone_kwargs=tiny, neck_kwargs={"out_channels": 16},
                            head_kwargs={"num_convs": 1})
    assert model.strides == (8, 16, 32, 64, 128) and model.image_size == (64, 64)
    assert model.body.model_kwargs["out_indices"] == (0,)
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    _detect(model, x, BOXES, jnp.array([[1, 2]] * 2), VALID)
    with pytest.raises(ValueError, match="image_size"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                       jax.ShapeDtypeStruct((1, 96, 96, 3), jnp.float32))


def test_simple_pyramid_is_vitdets():
    """ViTDet's Mask R-CNN pyramid (scales 4, 2, 1, 0.5 + P6 by pooling) on a stride-16 map:
    detectron2's layer names and widths (transposed convs to dim/2, dim/4; 1x1 + 3x3 convs
    without bias, each with a LayerNorm)."""
    from jaxvision.necks import SimplePyramid

    neck = SimplePyramid(8, (4.0, 2.0, 1.0, 0.5), 16, "pool")
    x = jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32)
    out, v = jax.eval_shape(lambda x: neck.init_with_output(jax.random.key(0), {"m": x}), x)
    assert {k: o.shape for k, o in out.items()} == {
        "p2": (1, 32, 32, 8), "p3": (1, 16, 16, 8), "p4": (1, 8, 8, 8), "p5": (1, 4, 4, 8),
        "p6": (1, 2, 2, 8)}
    p = v["params"]
    assert p["simfp_2_0"]["kernel"].shape == (2, 2, 32, 16) and "simfp_2_1" in p
    assert p["simfp_2_3"]["kernel"].shape == (2, 2, 16, 8)
    assert set(p["simfp_2_4"]) == {"kernel"} and set(p["simfp_2_4_norm"]) == {"scale", "bias"}
    assert p["simfp_3_0"]["kernel"].shape == (2, 2, 32, 16)
    assert p["simfp_4_0"]["kernel"].shape == (1, 1, 32, 8)
    assert p["simfp_5_1"]["kernel"].shape == (1, 1, 32, 8)
    assert p["simfp_5_2"]["kernel"].shape == (3, 3, 8, 8)
    assert neck.strides() == (4, 8, 16, 32, 64)
    with pytest.raises(ValueError, match="scale_factors must be decreasing values"):
        SimplePyramid(8, (3.0,)).init(jax.random.key(0), jnp.ones((1, 4, 4, 8)))


@pytest.mark.parametrize("channels,rates", [(0, (6, 12, 18, 24)), (16, (12,))])
def test_deeplab_v1_v2_heads_equal_torch(channels, rates):
    """DeepLab v2's summed ASPP (one dilated conv per rate, ResNet's; or fc6/fc7/fc8 per rate,
    VGG's ASPP-L) and v1's LargeFOV (one fc6/fc7/fc8 branch at rate 12), against the same
    layers in torch with the same weights."""
    torch = pytest.importorskip("torch")
    from jaxvision.heads.segmentation import DeepLabV2Head

    nn = torch.nn
    head = DeepLabV2Head(5, rates, channels)
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, 24))
    v = head.init(jax.random.key(0), x)
    p = v["params"]

    def conv(name, cin, cout, k, rate=1):
        c = nn.Conv2d(cin, cout, k, padding=(k - 1) // 2 * rate, dilation=rate)
        c.weight.data = torch.from_numpy(np.asarray(p[name]["kernel"]).transpose(3, 2, 0, 1))
        c.bias.data = torch.from_numpy(np.asarray(p[name]["bias"]))
        return c

    branches = []
    for i, r in enumerate(rates):
        if channels:
            branches.append(nn.Sequential(
                conv(f"branch_{i}_fc6", 24, channels, 3, r), nn.ReLU(), nn.Dropout(0.5),
                conv(f"branch_{i}_fc7", channels, channels, 1), nn.ReLU(), nn.Dropout(0.5),
                conv(f"branch_{i}_fc8", channels, 5, 1)))
        else:
            branches.append(conv(f"branch_{i}_fc8", 24, 5, 3, r))
    assert len(p) == len(rates) * (3 if channels else 1)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2))
    with torch.no_grad():
        want = sum(b.eval()(xt) for b in branches).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(head.apply(v, x)), want, atol=1e-5, rtol=1e-5)
