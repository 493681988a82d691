"""SqueezeNet 1.0/1.1 and AlexNet against torchvision (both without BatchNorm: with dropout 0
their train mode is their eval mode, so train parity is eval parity and there are no running
statistics; dropout is tested on its own)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

import jaxvision as jv
from tv_parity import check_eval, check_features, check_input_grad, tv_model
from zoo_checks import check_dropout, check_embedding, check_param_count, check_stages

NODES = {
    "squeezenet1_0": {f"features.{i}": f"features_{i}" for i in (1, 5, 10, 12)},
    "squeezenet1_1": {f"features.{i}": f"features_{i}" for i in (1, 4, 7, 12)},
    "alexnet": {f"features.{i}": f"features_{i}" for i in (1, 4, 11, 12)},
}


@pytest.mark.parametrize("name", list(NODES))
def test_param_count_equals_torchvision(name):
    check_param_count(name)


@pytest.mark.parametrize("name", ["squeezenet1_1", "alexnet"])
def test_parity_with_torchvision(name):
    # SqueezeNet: every bias is zero-initialised by torchvision, re-randomised here.
    # 193x257 hits ceil_mode pooling windows that hang over the edge (SqueezeNet) and uneven
    # adaptive 6x6 bins (AlexNet's 5x7 map)
    tmodel = tv_model(lambda: getattr(torchvision.models, name)(dropout=0.0), nonzero=True)
    model = jv.create_model(name, dropout=0.0)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    check_eval(name, tmodel, variables, model, [(224, 224), (193, 257)])
    check_features(name, tmodel, NODES[name], variables, {}, (193, 257))
    check_input_grad(name, tmodel, variables, model, (97, 129))


def test_squeezenet1_0_small_forward():
    tmodel = tv_model("squeezenet1_0", nonzero=True)
    model = jv.create_model("squeezenet1_0")
    variables = jv.load_pretrained("squeezenet1_0", tmodel.state_dict(), model=model)
    check_eval("squeezenet1_0", tmodel, variables, model, [(65, 97)])
    check_features("squeezenet1_0", tmodel, NODES["squeezenet1_0"], variables, {}, (65, 97))


def _alexnet_embedding(tmodel, x):  # the 4096-d output of classifier.4 + ReLU
    tmodel.classifier[6] = torch.nn.Identity()
    return tmodel(x)


def _squeezenet_embedding(tmodel, x):  # the classifier is a conv: the embedding is its input
    return tmodel.features(x).mean((2, 3))


@pytest.mark.parametrize("name,embed", [("squeezenet1_1", _squeezenet_embedding),
                                        ("alexnet", _alexnet_embedding)])
def test_num_classes_zero_gives_embedding(name, embed):
    check_embedding(name, embed, size=(97, 129))


@pytest.mark.parametrize("name", ["squeezenet1_1", "alexnet"])
def test_dropout_draws_from_the_dropout_rng(name):
    x, variables, evals = check_dropout(jv.create_model(name, num_classes=10), size=64)
    no_drop = jv.create_model(name, num_classes=10, dropout=0.0)
    np.testing.assert_allclose(jax.jit(lambda v: no_drop.apply(v, x, train=True))(variables),
                               evals, rtol=1e-5, atol=1e-6)  # another program: other fusion


def test_features_only_info_and_out_indices():
    for name, sizes in [("squeezenet1_0", [109, 54, 27, 13]), ("squeezenet1_1", [111, 55, 27, 13]),
                        ("alexnet", [55, 27, 13, 6])]:
        model = jv.create_model(name, features_only=True)
        feats = jax.eval_shape(lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
        info = model.feature_info
        # torchvision's sizes at 224 (unpadded convs: below 224 / reduction)
        assert [feats[f.name].shape for f in info] == [(1, s, s, f.channels)
                                                       for s, f in zip(sizes, info)]
        assert info == jv.model_info(name).features
    model = jv.create_model("alexnet", features_only=True, out_indices=(-1,))
    feats = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
    assert list(feats) == ["features_12"]


@pytest.mark.parametrize("name,groups,head", [
    ("squeezenet1_0", [("features.0.",), ("features.3.", "features.4.", "features.5."),
                       tuple(f"features.{i}." for i in range(7, 11)), ("features.12.",)],
     "classifier.1."),
    ("squeezenet1_1", [("features.0.",), ("features.3.", "features.4."),
                       ("features.6.", "features.7."),
                       tuple(f"features.{i}." for i in range(9, 13))], "classifier.1."),
    ("alexnet", [("features.0.",), ("features.3.",),
                 ("features.6.", "features.8.", "features.10.")], "classifier."),
])
def test_frozen_stages_and_linear_probe(name, groups, head):
    check_stages(name, groups, head)


def test_bad_squeezenet_version_is_named():
    from jaxvision.models.squeezenet import SqueezeNet

    with pytest.raises(ValueError, match="Unsupported SqueezeNet version 1_2"):
        SqueezeNet(version="1_2").init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
