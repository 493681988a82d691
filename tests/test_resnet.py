"""ResNet family against torchvision: parameter counts, eval/train/feature/gradient parity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

import jaxvision as jv
from tv_parity import (check_eval, check_features, check_input_grad, check_train, images,
                       nchw, param_count, torch_param_count, tv_model, assert_parity, as_float64)

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
           "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
NODES = {"relu": "stem", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3",
         "layer4": "layer4"}
# The deepest and widest are checked at smaller train/gradient inputs to keep the suite short.
HEAVY = {"resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"}


def abstract_count(name, **kwargs):
    model = jv.create_model(name, **kwargs)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    return param_count(shapes)


@pytest.mark.parametrize("name", RESNETS)
def test_param_count_equals_torchvision(name):
    with torch.device("meta"):
        expected = torch_param_count(getattr(torchvision.models, name)())
    assert abstract_count(name) == expected == jv.model_info(name).num_params


# the deeper and wider variants run in the sweep (together ~6 CPU-minutes), and resnet34
# (resnet18's blocks, deeper); the suite keeps resnet18/50 and resnext50_32x4d, which exercise
# every block, group and width path
_SWEEP_RESNETS = {"resnet34", "resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d",
                  "wide_resnet50_2", "wide_resnet101_2"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.sweep)
                                  if n in _SWEEP_RESNETS else n for n in RESNETS])
def test_parity_with_torchvision(name):
    tmodel = tv_model(name)
    model = jv.create_model(name)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    small = (65, 81) if name in HEAVY else (97, 129)
    check_eval(name, tmodel, variables, model, [(224, 224), (193, 257)])
    if name not in HEAVY:  # their stages are the same code as resnet50's, checked at full depth
        check_features(name, tmodel, NODES, variables, {}, (193, 257))
    check_train(name, tmodel, variables, model, small)
    check_input_grad(name, tmodel, variables, model, small)


@pytest.mark.parametrize("dilation,strides", [((False, True, True), (2, 4, 8, 8, 8)),
                                              ((False, False, True), (2, 4, 8, 16, 16))])
def test_dilated_resnet50_matches_torchvision(dilation, strides):
    tmodel = tv_model("resnet50", replace_stride_with_dilation=list(dilation))
    kwargs = {"replace_stride_with_dilation": dilation}
    model = jv.create_model("resnet50", **kwargs)
    variables = jv.load_pretrained("resnet50", tmodel.state_dict(), model=model)
    check_eval("resnet50 dilated", tmodel, variables, model, [(129, 161)])
    check_features("resnet50", tmodel, NODES, variables, kwargs, (129, 161))
    feats = jax.eval_shape(jv.create_model("resnet50", features_only=True, **kwargs).apply,
                           variables, jnp.zeros((1, 128, 128, 3)))
    # (eval_shape's dict comes back in sorted key order: read it by name)
    assert [128 // feats[n].shape[1] for n in NODES.values()] == list(strides)


def test_basic_block_refuses_dilation_like_torchvision():
    model = jv.create_model("resnet18", replace_stride_with_dilation=(False, False, True))
    with pytest.raises(NotImplementedError, match="Dilation > 1"):  # raised while tracing
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_frozen_batchnorm_matches_torchvision_and_never_changes():
    from torchvision.ops import FrozenBatchNorm2d

    ref = tv_model("resnet18")
    tmodel = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d)
    tmodel.load_state_dict(ref.state_dict(), strict=False)
    tmodel.eval()
    model = jv.create_model("resnet18", norm="frozen")
    variables = jv.load_pretrained("resnet18", tmodel.state_dict(), model=model)
    assert "bn1" not in variables["params"]  # affine lives with the statistics
    check_eval("resnet18 frozen BN", tmodel, variables, model, [(97, 129)])
    x = jnp.asarray(images((2, 64, 64, 3)))

    @jax.jit  # one compiled program: op by op, these three passes cost several times more
    def run(variables, x):
        out_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        grads = jax.grad(lambda p: model.apply({**variables, "params": p}, x).sum())(
            variables["params"])
        return out_train, updates, model.apply(variables, x, train=False), grads

    out_train, updates, out_eval, grads = run(variables, x)
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
    np.testing.assert_array_equal(out_train, out_eval)
    assert set(grads) == {"conv1", "layer1_0", "layer1_1", "layer2_0", "layer2_1", "layer3_0",
                          "layer3_1", "layer4_0", "layer4_1", "fc"}


def test_norm_eval_keeps_statistics_in_training():
    model = jv.create_model("resnet18", norm="batch_eval")
    x = jnp.asarray(images((2, 64, 64, 3)))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])


def test_zero_init_residual_like_torchvision():
    model = jv.create_model("resnet50", zero_init_residual=True)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert not np.any(variables["params"]["layer1_0"]["bn3"]["scale"])
    assert np.all(variables["params"]["layer1_0"]["bn2"]["scale"] == 1)
    tmodel = torchvision.models.resnet50(zero_init_residual=True)
    assert not torch.any(tmodel.layer1[0].bn3.weight)
    basic = jv.create_model("resnet18", zero_init_residual=True)
    bv = jax.jit(basic.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert not np.any(bv["params"]["layer2_1"]["bn2"]["scale"])


def test_num_classes_zero_gives_pooled_embedding():
    tmodel = tv_model("resnet18")
    model = jv.create_model("resnet18", num_classes=0)
    variables = jv.load_pretrained("resnet18", tmodel.state_dict(), model=model, strict=False)
    x = images((2, 97, 129, 3))
    got = jax.jit(model.apply)(variables, jnp.asarray(x))
    assert got.shape == (2, 512)
    tmodel.fc = torch.nn.Identity()
    with torch.no_grad():
        want = tmodel(nchw(x))
    assert_parity("resnet18 embedding", got, want,
                  lambda: as_float64(tmodel)(nchw(x).double()).detach())


def test_features_only_out_indices_and_info():
    model = jv.create_model("resnet50", features_only=True, out_indices=(1, -1))
    feats = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
    assert list(feats) == ["layer1", "layer4"]
    info = {f.name: f for f in jv.model_info("resnet50").features}
    for key, value in feats.items():
        assert value.shape == (1, 224 // info[key].reduction, 224 // info[key].reduction,
                               info[key].channels)
    with pytest.raises(ValueError, match="out_indices"):
        jax.eval_shape(jv.create_model("resnet50", features_only=True, out_indices=(5,)).init,
                       jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_bfloat16_compute_keeps_float32_params():
    model = jv.create_model("resnet18", dtype=jnp.bfloat16)
    x = jnp.asarray(images((2, 64, 64, 3)))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(model.apply)(variables, x)
    assert out.dtype == jnp.bfloat16
    ref = jax.jit(jv.create_model("resnet18").apply)(variables, x)
    assert float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))) < 0.1 * float(jnp.max(jnp.abs(ref))) + 0.05
