"""EfficientDet-D0: its parts' parameters against the ``effdet`` package's ``efficientdet_d0``,
the detector interface, and a short run on ``shapes`` through the engine."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision

import jaxvision as jv
from jaxvision.convert import merge
from jaxvision.convert import torchvision as tv
from jaxvision.train.freeze import default_freeze_config, param_paths, trainable_mask
from jaxvision.train.loop import train
from test_detection_engine import det_config

effdet = pytest.importorskip("effdet")  # the test extra installs it

# a small EfficientNet for the engine run: the stem halves, then one MBConv per stage down to
# stride 32 (rows: block, expand, kernel, stride, in, out, layers)
TINY_BACKBONE = dict(inverted_residual_setting=(
    ("mb", 1, 3, 1, 16, 16, 1), ("mb", 2, 3, 2, 16, 24, 1), ("mb", 2, 3, 2, 24, 32, 1),
    ("mb", 2, 3, 2, 32, 48, 1), ("mb", 2, 3, 2, 48, 64, 1)), stochastic_depth_prob=0.0)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameters_equal_effdets_where_the_parts_are_the_same():
    tmodel = effdet.create_model("efficientdet_d0", pretrained=False, pretrained_backbone=False)
    theirs = {k: sum(p.numel() for p in getattr(tmodel, k).parameters())
              for k in ("backbone", "fpn", "class_net", "box_net")}
    model = jv.create_model("efficientdet_d0", num_classes=tmodel.config.num_classes)  # 90
    x = jnp.zeros((1, 128, 128, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    ours = {k: count(v) for k, v in variables["params"].items()}
    assert ours["class_net"] == theirs["class_net"] == 69_162
    assert ours["box_net"] == theirs["box_net"] == 18_852
    # jaxvision's (torchvision's) efficientnet_b0 ends stride 32 with features.8, the 1x1 conv
    # to 1280 channels + BN, where timm's features_only stops at 320 channels ...
    assert ours["backbone"] - theirs["backbone"] == 320 * 1280 + 2 * 1280
    # ... so the BiFPN's three 1x1 resampling convs that read C5 (for P6, and P5's top-down
    # and bottom-up nodes) take 1280 channels, not 320 (tests/test_bifpn.py: equal to effdet's
    # BiFpn built on these channels)
    assert ours["fpn"] - theirs["fpn"] == 3 * (1280 - 320) * 64
    # the registered count is at 91 classes: 9 anchors x (64 weights + bias) more per class
    assert count(variables["params"]) + 9 * 65 == jv.model_info("efficientdet_d0").num_params
    # torchvision's efficientnet_b0 fills the backbone (model.pretrained_backbone's prefix)
    sd = {model.torch_backbone_prefix + k: v for k, v in
          torchvision.models.efficientnet_b0().state_dict().items()
          if not k.startswith("classifier.")}
    report = merge.Report()
    source, names = tv.map_state_dict(sd, variables, report)
    merge.fill(variables, source, names, report, strict=False)
    assert not report.unexpected and not report.mismatched
    assert {m.split("/")[1] for m in report.missing} == {"fpn", "class_net", "box_net"}
    # freeze.frozen_stages counts the backbone's stages (EfficientNet's features.0 .. 7)
    cfg = default_freeze_config()
    cfg.frozen_stages = 2
    mask = trainable_mask(variables["params"], cfg, "efficientdet_d0", model)
    frozen = {p.split("/")[1] for p, keep in zip(jax.tree.leaves(param_paths(
        variables["params"])), jax.tree.leaves(mask)) if not keep}
    assert frozen == {"features_0_0", "features_0_1", "features_1_0", "features_2_0",
                      "features_2_1"}
    # the detector interface, traced: padded detections, the loss dict
    sizes = jnp.array([[128, 100]])
    out = jax.eval_shape(lambda v: model.apply(v, x, image_sizes=sizes), variables)
    assert {k: v.shape for k, v in out.items()} == {
        "boxes": (1, 100, 4), "scores": (1, 100), "labels": (1, 100), "count": (1,)}
    boxes, labels, valid = jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), int), jnp.zeros((1, 2), bool)
    loss, _ = jax.eval_shape(lambda v: model.apply(
        v, x, boxes, labels, valid, method="loss", mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(1)}), variables)
    assert set(loss) == {"classification", "bbox_regression"}


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="efficientdet_d0 is a detector"):
        jv.create_model("efficientdet_d0", features_only=True)
    model = jv.create_model("efficientdet_d0", num_classes=3, backbone_kwargs=dict(
        inverted_residual_setting=(("mb", 1, 3, 1, 16, 16, 1), ("mb", 2, 3, 2, 16, 24, 1))))
    with pytest.raises(ValueError, match=r"strides \[2, 4\]; the BiFPN needs \(8, 16, 32\)"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


@pytest.mark.sweep  # ~100 s of CPU (train and eval steps compiled), over the suite's budget
def test_trains_on_shapes_through_the_engine(tmp_path):
    c = det_config()
    c.model.name = "efficientdet_d0"
    c.model.kwargs = dict(backbone_kwargs=TINY_BACKBONE, fpn_channels=16, fpn_repeats=1,
                          head_repeats=1, score_thresh=0.05, detections_per_img=10)
    c.optimizer.lr = 0.005
    c.conv_lowering = "xla"  # compiles faster than the CPU rewrites; the same sums
    c.train.update(steps=24, log_every=4)
    result = train(c, str(tmp_path), log=lambda *_: None)
    assert result["step"] == 24 and 0.0 <= result["val_ap50"] <= 1.0
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    assert len(losses) == 6 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_shapes_config_names_the_detector():
    from jaxvision.train.config import load_config_file

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = load_config_file(os.path.join(root, "configs", "efficientdet_shapes.py"))
    assert c.model.name == "efficientdet_d0" and c.data.source == "shapes"
    model = jv.create_model(c.model.name, num_classes=5, **c.model.kwargs.to_dict())
    assert (model.score_thresh, model.detections_per_img) == (0.01, 20)
