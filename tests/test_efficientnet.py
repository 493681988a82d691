"""EfficientNet B0-B7 and V2 S/M/L against torchvision."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

import jaxvision as jv
from jaxvision.convert.torchvision import module_path
from jaxvision.layers import BatchNorm
from jaxvision.models.efficientnet import stochastic_depth
from jaxvision.train import freeze
from family_checks import (assert_bfloat16_compute_keeps_float32_params,
                           assert_registry_matches_default_weights, assert_step_keeps_frozen,
                           frozen)
from tv_parity import (as_float64, assert_parity, check_eval, check_features, check_input_grad,
                       check_train, fill_zero_params_, images, nchw, param_count, randomize_,
                       torch_param_count, tv_model)

NAMES = [f"efficientnet_b{i}" for i in range(8)] + [f"efficientnet_v2_{s}" for s in "sml"]
# stage ends (last map at each stride, then the final 1x1 conv): torch node -> our name
NODES = {"efficientnet_b0": {f"features.{i}": f"features_{i}" for i in (1, 2, 3, 5, 8)},
         "efficientnet_v2_s": {f"features.{i}": f"features_{i}" for i in (1, 2, 3, 5, 7)}}
NO_DROP = dict(dropout=0.0, stochastic_depth_prob=0.0)  # train mode deterministic on both sides


def _abstract(name, size=64, **kwargs):
    model = jv.create_model(name, **kwargs)
    return model, jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                    jnp.zeros((1, size, size, 3))))


def _count_and_bn_settings(model):
    """Parameter count and (epsilon, momentum) of every BatchNorm, in call order, from one
    abstract init."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, BatchNorm) and context.method_name == "__call__":
            seen.append((context.module.epsilon, context.module.momentum))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return param_count(v), seen


@pytest.mark.parametrize("name", NAMES)
def test_param_count_and_batchnorm_settings_equal_torchvision(name):
    with torch.device("meta"):
        tmodel = getattr(torchvision.models, name)()
    count, bns = _count_and_bn_settings(jv.create_model(name))
    assert count == torch_param_count(tmodel) == jv.model_info(name).num_params
    # B5-B7 and V2 use other eps/momentum than torch's defaults: check each BN, in order
    assert bns == [(m.eps, m.momentum) for m in tmodel.modules()
                   if isinstance(m, torch.nn.BatchNorm2d)]


def test_b0_matches_torchvision():
    name = "efficientnet_b0"
    tmodel = tv_model(name, nonzero=True, **NO_DROP)
    model = jv.create_model(name, **NO_DROP)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)  # strict
    errs = {"eval": check_eval(name, tmodel, variables, model, [(224, 224), (161, 225)])}
    errs["features"] = check_features(name, tmodel, NODES[name], variables, {}, (161, 225))
    errs["train"] = check_train(name, tmodel, variables, model, (65, 97))
    errs["grad"] = check_input_grad(name, tmodel, variables, model, (65, 97))
    print(f"{name} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))


def _v2_s_checks(full):
    name = "efficientnet_v2_s"
    tmodel = tv_model(name, nonzero=True, **NO_DROP)
    model = jv.create_model(name, **NO_DROP)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    errs = {"eval": check_eval(name, tmodel, variables, model,
                               [(128, 128), (97, 129)] if full else [(97, 129)])}
    errs["features"] = check_features(name, tmodel, NODES[name], variables, {}, (97, 129))
    errs["train"] = check_train(name, tmodel, variables, model, (65, 97))  # BN eps 1e-3
    if full:
        errs["grad"] = check_input_grad(name, tmodel, variables, model, (65, 97))
    print(f"{name} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))


@pytest.mark.sweep  # 77 s; b0 in the suite covers MBConv, V2's FusedMBConv is checked here
def test_v2_s_matches_torchvision():
    """Fused blocks and V2's BatchNorm; the second input size and the gradient (B0 covers the
    gradient of every op V2 has) are in the sweep."""
    _v2_s_checks(full=False)


@pytest.mark.sweep
def test_v2_s_matches_torchvision_fully():
    _v2_s_checks(full=True)


@pytest.mark.sweep
@pytest.mark.parametrize("name", [n for n in NAMES if n not in NODES])
def test_every_variant_matches_torchvision(name):
    # calibrated at 64x64, B1/B2 reach logits of 3000 at 65x97 (torch float32 is then 3 from
    # float64); calibrated at tv_model's 128x128 they stay O(1)
    # B7 calibrated at 128x128 reaches logits of 1e5 at 65x97, torch float32 1e5 from float64
    # (measured); calibrated at 224x224, logits of 53 and torch float32 4e-4 from float64
    calib = (224, 224) if name == "efficientnet_b7" else (128, 128)
    tmodel = tv_model(name, nonzero=True, calib_size=calib, **NO_DROP)
    model = jv.create_model(name, **NO_DROP)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    errs = {"eval": check_eval(name, tmodel, variables, model, [(65, 97)]),
            "train": check_train(name, tmodel, variables, model, (65, 97)),  # B5-B7: momentum
            "grad": check_input_grad(name, tmodel, variables, model, (65, 97))}
    print(f"PARITY {name} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))


# A small net of both block kinds, residual and not, for what needs no full-size model
TINY = (("fused", 1, 3, 1, 16, 16, 1), ("fused", 4, 3, 2, 16, 24, 2), ("mb", 4, 3, 2, 24, 32, 2),
        ("mb", 6, 5, 1, 32, 32, 1))


def _tiny_torch():
    from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig

    rows = [(FusedMBConvConfig if kind == "fused" else MBConvConfig)(*row)
            for kind, *row in TINY]
    torch.manual_seed(0)
    tmodel = EfficientNet(rows, dropout=0.0, stochastic_depth_prob=0.0, num_classes=10)
    return randomize_(fill_zero_params_(tmodel), calib_size=(64, 64))


def test_stochastic_depth_draws_from_the_dropout_rng():
    # BN statistics fixed and dropout off: stochastic depth is the only train-mode randomness
    kw = dict(inverted_residual_setting=TINY, num_classes=10, norm="batch_eval", dropout=0.0)
    model = jv.create_model("efficientnet_b0", stochastic_depth_prob=0.5, **kw)
    x = jnp.asarray(images((4, 32, 32, 3)))
    variables = jv.load_pretrained("efficientnet_b0", _tiny_torch().state_dict(), model=model)
    run = functools.partial(jax.jit(lambda v, key: model.apply(v, x, train=True,
                                                              rngs={"dropout": key})), variables)
    a, b = np.asarray(run(jax.random.key(1))), np.asarray(run(jax.random.key(2)))
    assert np.max(np.abs(a - b)) > 0.01 * np.max(np.abs(a))
    np.testing.assert_array_equal(run(jax.random.key(1)), a)
    # eval mode ignores it and needs no rng; with p=0 train mode equals eval mode
    evaluate = jax.jit(lambda v: model.apply(v, x, train=False))
    off = jv.create_model("efficientnet_b0", stochastic_depth_prob=0.0, **kw)
    np.testing.assert_allclose(jax.jit(lambda v: off.apply(v, x, train=True))(variables),
                               evaluate(variables), atol=1e-6)


def test_stochastic_depth_drops_whole_rows_and_rescales():
    class Drop(nn.Module):
        p: float

        @nn.compact
        def __call__(self, x, train):
            return stochastic_depth(self, x, self.p, train)

    x = jnp.ones((4000, 2, 2, 3))
    y = np.asarray(Drop(0.3).apply({}, x, True, rngs={"dropout": jax.random.key(0)}))
    rows = y.reshape(4000, -1)
    assert np.all(rows == rows[:, :1])  # a sample is kept or dropped as a whole
    assert set(np.unique(rows).tolist()) == {0.0, np.float32(1 / 0.7)}
    assert abs(np.mean(rows[:, 0] == 0) - 0.3) < 0.03
    np.testing.assert_array_equal(Drop(0.3).apply({}, x, False), x)
    assert not np.any(Drop(1.0).apply({}, x, True, rngs={"dropout": jax.random.key(0)}))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Drop(1.5).apply({}, x, True, rngs={"dropout": jax.random.key(0)})


def test_embedding_and_features_only():
    tmodel = _tiny_torch()
    model = jv.create_model("efficientnet_b0", inverted_residual_setting=TINY, num_classes=0)
    variables = jv.load_pretrained("efficientnet_b0", tmodel.state_dict(), model=model,
                                   strict=False)
    assert "classifier_1" not in variables["params"]
    x = images((2, 33, 47, 3))
    got = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(x))
    assert got.shape == (2, 4 * 32)  # the final 1x1 conv's width
    tmodel.classifier = torch.nn.Identity()
    with torch.no_grad():
        want = tmodel(nchw(x))
    assert_parity("tiny EfficientNet embedding", got, want,
                  lambda: as_float64(tmodel)(nchw(x).double()).detach())
    for n, channels in [("efficientnet_b0", [16, 24, 40, 112, 1280]),
                        ("efficientnet_v2_s", [24, 48, 64, 160, 1280])]:
        fmodel = jv.create_model(n, features_only=True)
        feats = jax.eval_shape(lambda: fmodel.init_with_output(
            jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
        info = fmodel.feature_info
        assert [f.channels for f in info] == channels and info == jv.model_info(n).features
        assert [f.reduction for f in info] == [2, 4, 8, 16, 32]
        assert [feats[f.name].shape for f in info] == [
            (1, 224 // f.reduction, 224 // f.reduction, f.channels) for f in info]
    b7 = jv.create_model("efficientnet_b7", features_only=True).feature_info
    assert [(f.channels, f.reduction) for f in b7] == [(32, 2), (48, 4), (80, 8), (224, 16),
                                                        (2560, 32)]
    fmodel = jv.create_model("efficientnet_b0", features_only=True, out_indices=(0, 2))
    v = jax.eval_shape(fmodel.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert max(int(k.split("_")[1]) for k in v["params"]) == 3  # stops after features_3


@pytest.mark.parametrize("name,n_stages", [("efficientnet_b0", 7), ("efficientnet_v2_s", 6)])
def test_frozen_stages_and_linear_probe_follow_torchvision_modules(name, n_stages):
    model, variables = _abstract(name, num_classes=10)
    params = variables["params"]
    paths = jax.tree.leaves(freeze.param_paths(params))
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)(num_classes=10)
    # torchvision's module names through the converter's rule; features.k is stage k
    stage_of = {}
    for key, _ in tv.named_parameters():
        mods, _ = module_path(key)
        i = re.fullmatch(r"features_(\d+)(_\d+)?", mods[0])
        stage_of["/".join(mods)] = int(i.group(1)) if i else None
    assert {p.rsplit("/", 1)[0] for p in paths} == set(stage_of)
    for k in range(n_stages + 1):
        s = {p: stage_of[p.rsplit("/", 1)[0]] for p in paths}
        assert frozen(name, params, model, frozen_stages=k) == {
            p for p in paths if s[p] is not None and s[p] <= k}
    head = {"classifier_1/kernel", "classifier_1/bias"}
    assert frozen(name, params, model, linear_probe=True) == set(paths) - head
    with pytest.raises(ValueError, match=f"{name} has {n_stages} stages"):
        frozen(name, params, model, frozen_stages=n_stages + 1)
    assert_step_keeps_frozen(name, params, model, 3)


@pytest.mark.parametrize("name", NAMES)
def test_registry_matches_torchvision_default_weights(name):
    assert_registry_matches_default_weights(name)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(jv.create_model("efficientnet_b0").init, jax.random.key(0),
                       jnp.zeros((64, 64, 3)))
    from jaxvision.models.efficientnet import EfficientNet
    with pytest.raises(ValueError, match="arch must be one of"):
        EfficientNet(arch="b8").feature_info


def test_bfloat16_compute_keeps_float32_params():
    assert_bfloat16_compute_keeps_float32_params("efficientnet_b0")
