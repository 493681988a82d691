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
    model = jv.create_model("deeplabv3plus_resnet18", num_classes=3, head_channels=64)
    x = jnp.asarray(images((2, 48, 48, 3)))
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
    out = model.apply(variables, x)
    assert out["out"].shape == (2, 48, 48, 3)
    np.testing.assert_array_equal(out["out"], model.apply(variables, x)["out"])


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
