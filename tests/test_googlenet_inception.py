"""GoogLeNet and Inception v3 against torchvision: counts, eval/train/aux/feature/gradient parity.

Train-mode comparisons build both sides with every dropout at 0: torch's and JAX's dropout
masks come from different generators, so with dropout on, the outputs could only be compared
statistically.  What remains random in training (batch statistics) is deterministic.
"""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

import jaxvision as jv
from tv_parity import (as_float64, assert_parity, check_eval, check_features, check_input_grad,
                       check_train, images, nchw, param_count, torch_param_count, tv_model)

NO_DROP = {"googlenet": {"dropout": 0.0, "dropout_aux": 0.0}, "inception_v3": {"dropout": 0.0}}
NODES = {
    "googlenet": {n: n for n in ("conv1", "conv3", "inception3b", "inception4e", "inception5b")},
    "inception_v3": {n: n for n in ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e",
                                    "Mixed_7c")},
}


def abstract_count(name, **kwargs):
    model = jv.create_model(name, **kwargs)
    return param_count(jv.api.init_variables(model, name, abstract=True))


@pytest.mark.parametrize("name,aux", [("googlenet", False), ("googlenet", True),
                                      ("inception_v3", True), ("inception_v3", False)])
def test_param_count_equals_torchvision(name, aux):
    with torch.device("meta"):
        tmodel = getattr(torchvision.models, name)(aux_logits=aux, init_weights=False)
    expected = torch_param_count(tmodel)
    assert abstract_count(name, aux_logits=aux) == expected
    # the registered count is torchvision's pretrained configuration (googlenet without aux)
    spec = jv.model_info(name)
    assert spec.num_params == abstract_count(name)
    assert spec.num_params == {"googlenet": 6_624_904, "inception_v3": 27_161_264}[name]


def _pair(name, transform_input=False, **extra):
    """torchvision model with random weights + calibrated BN stats, aux heads on, no dropout;
    and jaxvision's twin loaded from its state_dict."""
    kwargs = dict(aux_logits=True, transform_input=transform_input, **NO_DROP[name], **extra)
    # inception's aux head runs in the calibration pass, which needs ~299x299 inputs
    calib = (299, 299) if name == "inception_v3" else (128, 128)
    tmodel = tv_model(name, init_weights=True, calib_size=calib, **kwargs)
    model = jv.create_model(name, **kwargs)
    return tmodel, model, jv.load_pretrained(name, tmodel.state_dict(), model=model)


@pytest.fixture(scope="module")
def googlenet():
    """One torchvision/jaxvision googlenet pair for the tests that compare or run it (each test
    that changes the torch model restores it)."""
    return _pair("googlenet")


def test_googlenet_parity(googlenet):
    tmodel, model, variables = googlenet
    check_eval("googlenet", tmodel, variables, model, [(224, 224), (193, 257)])
    check_features("googlenet", tmodel, NODES["googlenet"], variables,
                   {"transform_input": False}, (193, 257))
    check_train("googlenet", tmodel, variables, model, (97, 129))  # aux logits included
    check_input_grad("googlenet", tmodel, variables, model, (97, 129))


def test_googlenet_transform_input_and_pretrained_layout():
    """The default (transform_input=True, no aux heads) is torchvision's pretrained googlenet;
    torchvision's checkpoint carries aux1/aux2, which the default model drops, as torchvision's
    builder does, and loads the rest strictly."""
    tmodel = tv_model("googlenet", init_weights=True, aux_logits=True, transform_input=True)
    model = jv.create_model("googlenet")
    assert not model.aux_logits and model.transform_input
    variables = jv.load_pretrained("googlenet", tmodel.state_dict(), model=model)
    assert "aux1" not in variables["params"] and "aux2" not in variables["params"]
    check_eval("googlenet transform_input", tmodel, variables, model, [(161, 129)])
    x = jnp.asarray(images((2, 97, 97, 3)))
    out = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": jax.random.key(0)})[0])(variables, x)
    assert out.shape == (2, 1000)  # no aux heads: logits only, even in training


@pytest.mark.slow
def test_inception_v3_parity():
    tmodel, model, variables = _pair("inception_v3")
    # one eval size (the default): the features and the gradient below are checked at odd,
    # non-square sizes
    check_eval("inception_v3", tmodel, variables, model, [(299, 299)])
    check_features("inception_v3", tmodel, NODES["inception_v3"], variables,
                   {"transform_input": False}, (151, 173))
    # the aux head needs ~299x299 inputs (Mixed_6e >= 17x17), as in torchvision
    check_train("inception_v3", tmodel, variables, model, (299, 299))  # aux logits included
    check_input_grad("inception_v3", tmodel, variables, model, (107, 117))


def test_inception_v3_transform_input_and_no_aux_checkpoint():
    tmodel = tv_model("inception_v3", init_weights=True, transform_input=True,
                      calib_size=(299, 299))
    model = jv.create_model("inception_v3", aux_logits=False)
    assert model.transform_input
    variables = jv.load_pretrained("inception_v3", tmodel.state_dict(), model=model)
    assert "AuxLogits" not in variables["params"]
    check_eval("inception_v3 transform_input", tmodel, variables, model, [(139, 157)])


def test_inception_v3_rejects_small_inputs():
    # raised while tracing: abstract inits check the same code without computing the stem
    model = jv.create_model("inception_v3", aux_logits=False)
    with pytest.raises(ValueError, match="at least 75x75"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 74, 80, 3)))
    with pytest.raises(ValueError, match="AuxLogits needs Mixed_6e"):
        jax.eval_shape(jv.create_model("inception_v3").init, jax.random.key(0),
                       jnp.zeros((1, 160, 160, 3)))


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_eval_init_creates_aux_heads_and_eval_returns_logits(name):
    model = jv.create_model(name, aux_logits=True)
    x = jnp.zeros((1, 299, 299, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    heads = {"googlenet": {"aux1", "aux2"}, "inception_v3": {"AuxLogits"}}[name]
    assert heads <= set(variables["params"])
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert out.shape == (1, 1000)


@pytest.mark.parametrize("name,size", [("googlenet", 224), ("inception_v3", 299)])
def test_num_classes_zero_and_features_info(name, size):
    model = jv.create_model(name, num_classes=0)
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert not {"fc", "aux1", "aux2", "AuxLogits"} & set(variables["params"])
    out = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])[0],
                         variables)
    assert out.shape == (1, {"googlenet": 1024, "inception_v3": 2048}[name])
    fmodel = jv.create_model(name, features_only=True, out_indices=(0, -1))
    feats = jax.eval_shape(lambda: fmodel.init_with_output(jax.random.key(0), x)[0])
    info = {f.name: f for f in jv.model_info(name).features}
    assert list(feats) == [jv.model_info(name).features[i].name for i in (0, -1)]
    for key, value in feats.items():
        # ceil-mode pooling (googlenet) rounds up; inception's unpadded 3x3 convs and pools
        # lose pixels (299 -> 147 at "stride 2", 8 at "32"): reduction is nominal within 4
        assert value.shape[-1] == info[key].channels
        assert abs(value.shape[1] - size / info[key].reduction) < 4


def test_googlenet_num_classes_zero_matches_torch_embedding(googlenet):
    tmodel = copy.deepcopy(googlenet[0])  # the shared one keeps its fc
    model = jv.create_model("googlenet", num_classes=0, transform_input=False)
    variables = jv.load_pretrained("googlenet", tmodel.state_dict(), model=model, strict=False)
    x = images((2, 97, 129, 3))
    tmodel.fc = torch.nn.Identity()
    with torch.no_grad():
        want = tmodel(nchw(x))
    got = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(x))
    assert_parity("googlenet embedding", got, want,
                  lambda: as_float64(tmodel)(nchw(x).double()).detach())


def test_googlenet_dropout_uses_dropout_rng(googlenet):
    model = jv.create_model("googlenet", aux_logits=True)  # dropout 0.2, aux heads' 0.7
    x = jnp.asarray(images((2, 64, 64, 3)))
    variables = googlenet[2]  # the same parameters: dropout has none
    fwd = jax.jit(lambda v, r: model.apply(v, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": r})[0])
    run = lambda k: fwd(variables, jax.random.key(k))
    a, b = run(1), run(2)
    assert len(a) == 3 and all(o.shape == (2, 1000) for o in a)
    assert not np.allclose(a.logits, b.logits) and not np.allclose(a.aux_logits1, b.aux_logits1)
    np.testing.assert_array_equal(run(1).logits, a.logits)
