"""VGG family against torchvision: counts for every variant, full parity for vgg11/vgg11_bn,
one small forward for the others (vgg19 at 224 on a 2-core CPU is too slow for the suite)."""
import jax
import jax.numpy as jnp
import pytest
import torch
import torchvision

import jaxvision as jv
from jaxvision.models.vgg import CFGS, pool_indices
from tv_parity import (as_float64, assert_parity, check_eval, check_features, check_input_grad,
                       check_train, images, nchw, param_count, torch_param_count, tv_model)

VGGS = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
CFG = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def nodes(name):
    idx = pool_indices(CFGS[CFG[name.replace("_bn", "")]], name.endswith("_bn"))
    return {f"features.{i}": f"pool{k + 1}" for k, i in enumerate(idx)}


@pytest.mark.parametrize("name", VGGS)
def test_param_count_equals_torchvision(name):
    with torch.device("meta"):
        expected = torch_param_count(getattr(torchvision.models, name)())
    model = jv.create_model(name)
    got = param_count(jv.api.init_variables(model, name, abstract=True))
    assert got == expected == jv.model_info(name).num_params


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"])
def test_parity_with_torchvision(name):
    tmodel = tv_model(name, dropout=0.0)  # dropout 0: torch's and jax's masks differ
    model = jv.create_model(name, dropout=0.0)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    # 193x257 ends in a 6x8 map: adaptive pooling to 7x7 with overlapping, uneven bins
    check_eval(name, tmodel, variables, model, [(224, 224), (193, 257)])
    check_features(name, tmodel, nodes(name), variables, {}, (97, 129))
    if name.endswith("_bn"):  # without BN (and with dropout 0) train mode is eval mode
        check_train(name, tmodel, variables, model, (64, 64))
    check_input_grad(name, tmodel, variables, model, (64, 64))


@pytest.mark.parametrize("name", ["vgg13_bn", "vgg16", "vgg19_bn"])
def test_deeper_variants_small_forward(name):
    tmodel = tv_model(name, calib_size=(64, 64))
    model = jv.create_model(name)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    check_eval(name, tmodel, variables, model, [(64, 64)])


def test_num_classes_zero_gives_classifier_embedding():
    tmodel = tv_model("vgg11")
    model = jv.create_model("vgg11", num_classes=0)
    variables = jv.load_pretrained("vgg11", tmodel.state_dict(), model=model, strict=False)
    x = images((2, 64, 64, 3))
    got = jax.jit(model.apply)(variables, jnp.asarray(x))
    assert got.shape == (2, 4096) and "classifier_6" not in variables["params"]
    tmodel.classifier[6] = torch.nn.Identity()
    with torch.no_grad():
        want = tmodel(nchw(x))
    assert_parity("vgg11 embedding", got, want,
                  lambda: as_float64(tmodel)(nchw(x).double()).detach())


def test_features_only_strides():
    model = jv.create_model("vgg16_bn", features_only=True, out_indices=(0, 2, -1))
    x = jnp.zeros((1, 64, 64, 3))
    feats = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
    info = {f.name: f for f in jv.model_info("vgg16_bn").features}
    assert list(feats) == ["pool1", "pool3", "pool5"]
    for key, value in feats.items():
        r = info[key].reduction
        assert value.shape == (1, 64 // r, 64 // r, info[key].channels)
