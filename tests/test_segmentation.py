"""Segmentation models: shapes, errors, and the models without a torchvision twin."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvision as jv
from tv_parity import images, param_count

PAPER_MODELS = ["deeplabv3plus_resnet18", "deeplabv3plus_resnet50", "deeplabv3plus_mobilenet_v2"]


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_output_shape_and_registered_count(name):
    model = jv.create_model(name, num_classes=5)
    out, variables = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((2, 61, 83, 3))))
    assert {k: v.shape for k, v in out.items()} == {"out": (2, 61, 83, 5)}
    default = jv.create_model(name)
    shapes = jax.eval_shape(lambda: default.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert param_count(shapes) == jv.model_info(name).num_params


def test_small_segmenter_runs_and_trains_on_cpu():
    """deeplabv3plus_resnet18 (the CPU quickstart model): a train step's gradients reach the
    backbone and both heads' layers, BatchNorm statistics move, and eval is deterministic."""
    model = jv.create_model("deeplabv3plus_resnet18", num_classes=3, head_channels=16)
    x = jnp.asarray(images((2, 32, 32, 3)))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)

    def loss(params):
        out, upd = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
        return jnp.mean(out["out"] ** 2), upd

    (value, upd), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert np.isfinite(float(value))
    assert set(grads) == {"backbone", "classifier"}
    assert set(grads["classifier"]) == {"aspp", "project_0", "project_1", "fuse_0_0", "fuse_0_1",
                                        "fuse_1_0", "fuse_1_1", "classifier"}
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), upd["batch_stats"],
                         variables["batch_stats"])
    assert all(jax.tree.leaves(moved))
    fwd = jax.jit(model.apply)
    out = fwd(variables, x)
    assert out["out"].shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(out["out"], fwd(variables, x)["out"])


def test_bad_input_is_a_clear_error():
    model = jv.create_model("deeplabv3plus_resnet18", num_classes=0)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    model = jv.create_model("deeplabv3plus_resnet18")
    with pytest.raises(ValueError, match="expected NHWC"):
        model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32, 1)))
    with pytest.raises(ValueError, match="no auxiliary head"):
        jv.create_model("deeplabv3plus_resnet18", aux_loss=True)
    with pytest.raises(ValueError, match="features_only"):
        jv.create_model("fcn_resnet50", features_only=True)


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_fcn_vgg16_shapes_and_count(stride):
    name = f"fcn{stride}s_vgg16"
    model = jv.create_model(name, num_classes=4)
    out, variables = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((2, 67, 93, 3))))
    assert out["out"].shape == (2, 67, 93, 4)
    skips = {k for k in variables["params"] if k.startswith("score_pool")}
    assert skips == {32: set(), 16: {"score_pool4"}, 8: {"score_pool4", "score_pool3"}}[stride]
    default = jax.eval_shape(lambda: jv.create_model(name).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert param_count(default) == jv.model_info(name).num_params


def test_fcn8s_partial_load_of_torchvision_vgg16_fills_backbone_and_fc6_fc7():
    import torch
    import torchvision

    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):  # random tensors of vgg16's shapes, without vgg16's slow init
        shapes = {k: v.shape for k, v in torchvision.models.vgg16().state_dict().items()}
    sd = {k: torch.randn(shape, generator=g) * 0.01 for k, shape in shapes.items()}
    from jaxvision.api import init_variables
    from jaxvision.convert import merge
    from jaxvision.convert import torchvision as tv

    # jv.load_pretrained(strict=False)'s path, on the abstract variables: a real init would
    # draw 134M random numbers only to overwrite most of them
    name, model = "fcn8s_vgg16", jv.create_model("fcn8s_vgg16", num_classes=3)
    target = init_variables(model, name, abstract=True)
    report = merge.Report()
    source, names = tv.map_state_dict(jv.model_info(name).adapt_state_dict(sd, model), target,
                                      report)
    variables = merge.fill(target, source, names, report, strict=False)
    params = variables["params"]
    np.testing.assert_array_equal(params["backbone"]["features_28"]["kernel"],
                                  sd["features.28.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["fc6"]["kernel"], sd["classifier.0.weight"].numpy()
                                  .reshape(4096, 512, 7, 7).transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["fc7"]["bias"], sd["classifier.3.bias"].numpy())
    # every backbone/fc6/fc7 variable loaded; only the new score layers kept their init
    assert sorted(report.missing) == sorted(f"params/{s}/{w}" for s in
                                            ("score_fr", "score_pool4", "score_pool3")
                                            for w in ("kernel", "bias"))
    assert report.unexpected == [] and report.mismatched == []
    # fc6 as a conv on pool5 equals vgg16's classifier.0 Linear on the flattened pool5
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    with torch.device("meta"):
        vgg = torchvision.models.vgg16()
    vgg = vgg.to_empty(device="cpu").eval()
    vgg.load_state_dict(sd)  # (avgpool is adaptive: pool5 becomes 7x7 at any input size)
    with torch.no_grad():
        pool5 = vgg.avgpool(vgg.features(torch.from_numpy(x.transpose(0, 3, 1, 2))))
        want = vgg.classifier[0](torch.flatten(pool5, 1)).numpy()
    from jaxvision.layers import Conv2d

    fc6 = Conv2d(4096, 7, bias=True)
    got = fc6.apply({"params": params["fc6"]}, jnp.asarray(pool5.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got).reshape(1, 4096), want, atol=1e-4)


@pytest.mark.parametrize("name,n_stages", [("deeplabv3_resnet50", 4), ("fcn8s_vgg16", 5),
                                           ("lraspp_mobilenet_v3_large", 5),
                                           ("deeplabv3plus_mobilenet_v2", 5)])
def test_stage_layout_covers_backbone_and_heads(name, n_stages):
    """Every backbone parameter is in the stem or a stage (MobileNet's last 1x1 conv in none,
    as in freeze's table), every other parameter is head; freeze reads this layout."""
    import re

    from jaxvision.train.freeze import param_paths

    model = jv.create_model(name)
    layout = model.stage_layout
    assert layout.num_stages == n_stages
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    for path in jax.tree.leaves(param_paths(shapes["params"])):
        stage = layout.stage_of(path)
        is_head = re.match(layout.head, path) is not None
        if path.startswith("backbone/"):
            last_conv = "mobilenet" in name and stage is None and not is_head
            assert (stage is not None or last_conv) and not is_head, path
        else:
            assert is_head and stage is None, path
