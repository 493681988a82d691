"""MNASNet against torchvision: counts for every variant, full parity for mnasnet0_5, one small
forward for the others, torchvision's version-1 stem, BN momentum, and the declared stages."""
import jax
import jax.numpy as jnp
import pytest
import torch
import torchvision

import jaxvision as jv
from jaxvision.convert.merge import ConversionError
from tv_parity import check_eval, check_features, check_input_grad, check_train, tv_model
from zoo_checks import (check_dropout, check_embedding, check_feature_shapes, check_param_count,
                        check_stages)

NAMES = ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"]
NODES = {f"layers.{i}": f"layers_{i}" for i in (7, 8, 9, 11, 16)}


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_torchvision(name):
    check_param_count(name)


def test_parity_with_torchvision():
    name = "mnasnet0_5"
    # dropout 0 on both sides: train mode is then deterministic (torch and jax RNGs differ)
    tmodel = tv_model(lambda: torchvision.models.mnasnet0_5(dropout=0.0), nonzero=True)
    model = jv.create_model(name, dropout=0.0)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    check_eval(name, tmodel, variables, model, [(224, 224), (193, 257)])
    check_features(name, tmodel, NODES, variables, {}, (193, 257))
    # the running statistics move by torchvision's momentum 1 - 0.9997, which this compares
    check_train(name, tmodel, variables, model, (97, 129))
    check_input_grad(name, tmodel, variables, model, (97, 129))


@pytest.mark.sweep  # every variant's small forward: the exhaustive part
@pytest.mark.parametrize("name", NAMES[1:])
def test_wider_variants_small_forward_and_embedding(name):
    def pooled(tmodel, x):  # the pooled 1280-d map
        tmodel.classifier = torch.nn.Identity()
        return tmodel(x)

    check_embedding(name, pooled)


def _version1_model():
    """torchvision's own version-1 mnasnet0_5: loading a state_dict saved as version 1 makes
    MNASNet._load_from_state_dict swap in the fixed 32/16-channel stem (and the first stack
    built on it) before it copies the tensors, which then mismatch: the swap is what we keep."""
    torch.manual_seed(0)  # weights independent of the tests before
    tmodel = torchvision.models.mnasnet0_5()
    sd = tmodel.state_dict()
    sd._metadata[""]["version"] = 1
    with pytest.warns(UserWarning, match="previous version"), \
            pytest.raises(RuntimeError, match="size mismatch"):
        tmodel.load_state_dict(sd)
    return tv_model(tmodel, nonzero=True, calib_size=(64, 64))


def test_version1_stem():
    tmodel = _version1_model()
    assert tmodel.layers[0].out_channels == 32
    with pytest.raises(ConversionError, match="stem_version=1"):
        jv.load_pretrained("mnasnet0_5", tmodel.state_dict())
    model = jv.create_model("mnasnet0_5", stem_version=1)
    variables = jv.load_pretrained("mnasnet0_5", tmodel.state_dict(), model=model)
    check_eval("mnasnet0_5 version 1", tmodel, variables, model, [(64, 64)])
    # the stride-2 map has the version-1 stem's 16 channels, not alpha 0.5's 8
    assert model.feature_info[0].channels == 16
    assert jv.create_model("mnasnet0_5").feature_info[0].channels == 8


def test_features_only_info_and_out_indices():
    for name in ("mnasnet0_5", "mnasnet1_3"):
        assert [f.reduction for f in check_feature_shapes(name)] == [2, 4, 8, 16, 32]
    model = jv.create_model("mnasnet1_0", features_only=True, out_indices=(-2,))
    feats = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3)))[0])
    assert {k: v.shape for k, v in feats.items()} == {"layers_11": (1, 4, 4, 96)}


def test_dropout_draws_from_the_dropout_rng():
    check_dropout(jv.create_model("mnasnet0_5", norm="batch_eval", num_classes=10))


def test_frozen_stages_and_linear_probe():
    check_stages("mnasnet0_5",
                 [("layers.0.", "layers.1."), tuple(f"layers.{i}." for i in range(3, 8)),
                  ("layers.8.",), ("layers.9.",), ("layers.10.", "layers.11."),
                  ("layers.12.", "layers.13.")], head="classifier.1.")
