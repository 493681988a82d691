"""MobileNet V1/V2/V3 against torchvision (V1 against the paper and a torch port of it)."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

import jaxvision as jv
from tv_parity import (as_float64, assert_parity, check_eval, check_features, check_input_grad,
                       check_train, images, nchw, param_count, torch_param_count, tv_model)

TV_NAMES = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
# torch graph node (the module's last op) -> jaxvision feature name
NODES = {
    "mobilenet_v2": {f"features.{i}": f"features_{i}" for i in (1, 3, 6, 13, 18)},
    "mobilenet_v3_large": {f"features.{i}": f"features_{i}" for i in (1, 3, 6, 12, 16)},
    "mobilenet_v3_small": {f"features.{i}": f"features_{i}" for i in (0, 1, 3, 8, 12)},
}


class Jitted:
    """The module with a jitted ``apply``: op-by-op dispatch of these many small layers cost
    37 s (train check) and 58 s (input gradient) for mobilenet_v3_small on this 2-core machine.
    Everything else (init, attributes) is the module's own."""

    def __init__(self, module):
        self._module, self._compiled = module, {}

    def apply(self, variables, x, train=False, mutable=False, **kwargs):
        key = (train, tuple(mutable) if isinstance(mutable, list) else mutable)
        if key not in self._compiled:
            mut = list(key[1]) if isinstance(key[1], tuple) else key[1]
            self._compiled[key] = jax.jit(
                lambda v, x: self._module.apply(v, x, train=train, mutable=mut))
        return self._compiled[key](variables, x)

    def __getattr__(self, name):
        return getattr(self._module, name)


def abstract_count(name, **kwargs):
    model = jv.create_model(name, **kwargs)
    return param_count(jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                         jnp.zeros((1, 64, 64, 3)))))


@pytest.mark.parametrize("name,kwargs", [
    ("mobilenet_v2", {}), ("mobilenet_v2", {"width_mult": 0.75}),
    ("mobilenet_v3_large", {}), ("mobilenet_v3_small", {}),
    ("mobilenet_v3_large", {"dilated": True}), ("mobilenet_v3_small", {"dilated": True}),
    ("mobilenet_v3_large", {"reduced_tail": True, "width_mult": 0.75}),
])
def test_param_count_equals_torchvision(name, kwargs):
    with torch.device("meta"):
        expected = torch_param_count(getattr(torchvision.models, name)(**kwargs))
    assert abstract_count(name, **kwargs) == expected
    if not kwargs:
        assert expected == jv.model_info(name).num_params


# mobilenet_v3_small is built from mobilenet_v3_large's blocks (its dilated trunk is compared
# below): its full check runs in the sweep
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.sweep)
                                  if n == "mobilenet_v3_small" else n for n in TV_NAMES])
def test_parity_with_torchvision(name):
    # dropout 0 on both sides: train mode is then deterministic (torch and jax RNGs differ)
    tmodel = tv_model(name, dropout=0.0)
    model = Jitted(jv.create_model(name, dropout=0.0))
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    check_eval(name, tmodel, variables, model, [(224, 224), (161, 225)])
    # The last map (final 1x1 conv + hardswish) reaches |x| ~ 143 on mobilenet_v3_small at
    # 161x225: measured ours 3.2e-4 from torch float32 and 3.4e-4 from float64, where torch
    # float32 itself is 3.3e-4 from float64, so check_features falls back to the float64 bar.
    check_features(name, tmodel, NODES[name], variables, {}, (161, 225))
    check_train(name, tmodel, variables, model, (97, 129))
    check_input_grad(name, tmodel, variables, model, (97, 129))


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_dilated_v3_matches_torchvision(name):
    # the last feature map is the whole trunk, so the features cover every dilated layer
    tmodel = tv_model(name, dilated=True)
    kwargs = {"dilated": True}
    model = jv.create_model(name, **kwargs)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    check_features(name, tmodel, NODES[name], variables, kwargs, (129, 161))
    fmodel = jv.create_model(name, features_only=True, **kwargs)
    feats = jax.eval_shape(fmodel.apply, variables, jnp.zeros((1, 128, 128, 3)))
    # pytrees sort dict keys ("features_12" < "features_3"): read them in feature_info order
    assert [128 // feats[f.name].shape[1] for f in fmodel.feature_info] == [2, 4, 8, 16, 16]
    assert [f.reduction for f in fmodel.feature_info] == [2, 4, 8, 16, 16]


def test_width_mult_and_reduced_tail_match_torchvision():
    tmodel = tv_model("mobilenet_v3_small", width_mult=0.75, reduced_tail=True)
    model = jv.create_model("mobilenet_v3_small", width_mult=0.75, reduced_tail=True)
    variables = jv.load_pretrained("mobilenet_v3_small", tmodel.state_dict(), model=model)
    check_eval("mobilenet_v3_small 0.75 reduced tail", tmodel, variables, model, [(97, 129)])
    tmodel = tv_model("mobilenet_v2", width_mult=0.75)
    model = jv.create_model("mobilenet_v2", width_mult=0.75)
    variables = jv.load_pretrained("mobilenet_v2", tmodel.state_dict(), model=model)
    check_eval("mobilenet_v2 0.75", tmodel, variables, model, [(97, 129)])


def test_frozen_batchnorm_v3_matches_torchvision():
    from torchvision.ops import FrozenBatchNorm2d

    ref = tv_model("mobilenet_v3_small")
    tmodel = torchvision.models.mobilenet_v3_small(
        norm_layer=partial(FrozenBatchNorm2d, eps=0.001))
    tmodel.load_state_dict(ref.state_dict(), strict=False)
    tmodel.eval()
    model = jv.create_model("mobilenet_v3_small", norm="frozen", dropout=0.0)
    variables = jv.load_pretrained("mobilenet_v3_small", tmodel.state_dict(), model=model)
    check_eval("mobilenet_v3_small frozen BN", tmodel, variables, model, [(97, 129)])
    x = jnp.asarray(images((2, 64, 64, 3)))
    _, updates = Jitted(model).apply(variables, x, train=True, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])


# V2's head (pool, dropout, Linear) is V1's, whose embedding shape features_only tests cover
@pytest.mark.parametrize("name,dim", [("mobilenet_v3_small", 576)])  # large's head code
def test_num_classes_zero_gives_pooled_embedding(name, dim):
    tmodel = tv_model(name)
    model = Jitted(jv.create_model(name, num_classes=0))
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model, strict=False)
    x = images((2, 97, 129, 3))
    got = model.apply(variables, jnp.asarray(x))
    assert got.shape == (2, dim)
    tmodel.classifier = torch.nn.Identity()
    with torch.no_grad():
        want = tmodel(nchw(x))
    assert_parity(f"{name} embedding", got, want,
                  lambda: as_float64(tmodel)(nchw(x).double()).detach())


def test_dropout_draws_from_the_dropout_rng():
    # batch_eval keeps BN out of it: the only train-mode randomness is the classifier's dropout
    model = jv.create_model("mobilenet_v3_small", norm="batch_eval")
    x = jnp.asarray(images((2, 64, 64, 3)))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    run = partial(jax.jit(lambda v, key: model.apply(v, x, train=True,
                                                              rngs={"dropout": key})), variables)
    a, b = np.asarray(run(jax.random.key(1))), np.asarray(run(jax.random.key(2)))
    assert np.max(np.abs(a - b)) > 0.01 * np.max(np.abs(a))  # logits are ~1e-9 at init
    np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
    no_drop = Jitted(jv.create_model("mobilenet_v3_small", norm="batch_eval", dropout=0.0))
    np.testing.assert_allclose(no_drop.apply(variables, x, train=True),
                               Jitted(model).apply(variables, x), atol=1e-6)


def test_init_matches_torchvision_scheme():
    model = jv.create_model("mobilenet_v3_small")
    p = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    fc = np.asarray(p["classifier_3"]["kernel"])
    assert abs(fc.std() - 0.01) < 1e-3 and not np.any(p["classifier_3"]["bias"])
    assert not np.any(p["features_1"]["block_1"]["fc1"]["bias"])
    dw = np.asarray(p["features_1"]["block_0_0"]["kernel"])  # (3, 3, 1, 16): fan_out = 9 * 16
    t = torchvision.models.mobilenet_v3_small().features[1].block[0][0].weight
    assert dw.shape == tuple(t.permute(2, 3, 1, 0).shape)
    assert abs(dw.std() / float(t.detach().std()) - 1) < 0.25  # both ~ sqrt(2 / 144) = 0.118


def test_features_only_out_indices_and_info():
    model = jv.create_model("mobilenet_v2", features_only=True, out_indices=(0, -1))
    feats = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
    assert list(feats) == ["features_1", "features_18"]
    for name in ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v1"]:
        model = jv.create_model(name, features_only=True)
        feats = jax.eval_shape(lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
        info = jv.model_info(name).features
        assert [f.reduction for f in info] == [2, 4, 8, 16, 32]
        assert [feats[f.name].shape for f in info] == [
            (1, 224 // f.reduction, 224 // f.reduction, f.channels) for f in info]
    with pytest.raises(ValueError, match="out_indices"):
        jax.eval_shape(jv.create_model("mobilenet_v3_small", features_only=True,
                                       out_indices=(5,)).init,
                       jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


# --------------------------------------------------------------------------- MobileNet V1

class TorchMobileNetV1(torch.nn.Module):
    """The paper's Table 1 written in torch, in the layout jaxvision uses."""

    def __init__(self, alpha=1.0, num_classes=1000):
        super().__init__()
        nn = torch.nn
        cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [
            (1024, 2), (1024, 1)]
        c = int(32 * alpha)
        layers = [nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c),
                                nn.ReLU())]
        for out, s in cfg:
            out = int(out * alpha)
            layers.append(nn.Sequential(
                nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()))
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("alpha,millions", [(1.0, 4.2), (0.75, 2.6), (0.5, 1.3), (0.25, 0.5)])
def test_v1_param_count_matches_paper(alpha, millions):
    # Howard et al. 2017, Tables 6 and 7 (BN scale/shift counted, running statistics not)
    count = abstract_count("mobilenet_v1", alpha=alpha)
    assert round(count / 1e6, 1) == millions
    assert count == torch_param_count(TorchMobileNetV1(alpha))
    if alpha == 1.0:
        assert count == jv.model_info("mobilenet_v1").num_params


def test_v1_resolution_multiplier_changes_no_parameter():
    model = jv.create_model("mobilenet_v1", rho=160 / 224)
    assert model.image_size == 160
    assert abstract_count("mobilenet_v1", rho=160 / 224) == abstract_count("mobilenet_v1")
    v = jv.api.init_variables(model, "mobilenet_v1", abstract=True)
    assert v["params"]["classifier_1"]["kernel"].shape == (1024, 1000)
    info = jv.model_info("mobilenet_v1")
    assert info.torch_name is None and not info.has_torchvision_weights
    assert "no torchvision weights" in info.notes


def test_v1_matches_a_torch_port_of_the_paper():
    from tv_parity import randomize_

    torch.manual_seed(0)
    tmodel = randomize_(TorchMobileNetV1(alpha=0.5))
    model = Jitted(jv.create_model("mobilenet_v1", alpha=0.5))
    variables = jv.load_pretrained("mobilenet_v1", tmodel.state_dict(), model=model)
    check_eval("mobilenet_v1 0.5", tmodel, variables, model, [(128, 128), (97, 129)])
    nodes = {f"features.{i}": f"features_{i}" for i in (1, 3, 5, 11, 13)}
    check_features("mobilenet_v1", tmodel, nodes, variables, {"alpha": 0.5}, (97, 129))
    check_train("mobilenet_v1", tmodel, variables, model, (65, 97))


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name,kwargs,match", [
    ("mobilenet_v2", {"inverted_residual_setting": [[1, 16, 1]]}, "inverted_residual_setting"),
    ("mobilenet_v2", {"inverted_residual_setting": []}, "inverted_residual_setting"),
    ("mobilenet_v2", {"inverted_residual_setting": [[1, 16, 1, 3]]}, "stride should be 1 or 2"),
    ("mobilenet_v1", {"alpha": 0.0}, "alpha"),
    ("mobilenet_v3_small", {"norm": "layer"}, "norm must be one of"),
])
def test_bad_configuration_is_named(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jv.create_model(name, **kwargs).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_bad_v3_arch_is_named():
    from jaxvision.models.mobilenet import MobileNetV3

    with pytest.raises(ValueError, match="arch must be one of"):
        MobileNetV3(arch="medium").init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_bad_resolution_multiplier_is_named():
    with pytest.raises(ValueError, match="rho"):
        jv.api.init_variables(jv.create_model("mobilenet_v1", rho=-1.0), "mobilenet_v1")


def test_bfloat16_compute_keeps_float32_params():
    model = jv.create_model("mobilenet_v3_small", dtype=jnp.bfloat16)
    x = jnp.asarray(images((2, 64, 64, 3)))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = Jitted(model).apply(variables, x)
    assert out.dtype == jnp.bfloat16
    ref = Jitted(jv.create_model("mobilenet_v3_small")).apply(variables, x)
    scale = float(jnp.max(jnp.abs(ref)))
    assert float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))) < 0.1 * scale + 0.05
