"""The CPU rewrites are the default wherever a model is traced (a user's own ``model.apply``;
the engine with a config that does not name ``conv_lowering``: tests/test_engine_run.py), and
``"xla"`` is a choice made explicitly. Asserted on the lowering chosen for each traced
convolution (``conv_choices``, tests/conftest.py), not on time."""
import jax
import jax.numpy as jnp
import optax
import pytest

import jaxvision as jv
from jaxvision.layers import lowering
from jaxvision.train.config import ConfigError
from jaxvision.train.loop import train
from jaxvision.train.state import TrainState
from jaxvision.train.step import jit_steps, make_eval_step, make_mesh, make_train_step
from train_configs import RESNET18_CONVS, fast_path, tiny_config

pytestmark = pytest.mark.default_lowering  # no "xla" around these tests' traces

def resnet18_32px():
    model = jv.create_model("resnet18", num_classes=3)
    x = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
    return model, x, jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def test_a_users_model_apply_takes_the_rewrites(conv_choices):
    model, x, variables = resnet18_32px()
    conv_choices.clear()
    jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, x)
    assert fast_path(conv_choices) and len(conv_choices) == RESNET18_CONVS, conv_choices
    conv_choices.clear()
    with lowering.using("xla"):  # a new function: jax reuses the jaxpr of one traced before
        jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, x)
    assert conv_choices == ["xla"] * RESNET18_CONVS


def test_the_engines_steps_keep_an_explicit_xla(conv_choices):
    model, x, variables = resnet18_32px()
    tx = optax.sgd(0.1)
    state = jax.eval_shape(lambda v: TrainState.create(v, tx, 0, False), variables)
    batch = {"image": x, "label": jax.ShapeDtypeStruct((8,), jnp.int32),
             "valid": jax.ShapeDtypeStruct((8,), jnp.bool_)}
    steps = [make_train_step(model, tx, 3), make_eval_step(model, 3)]
    conv_choices.clear()
    train_step, eval_step = jit_steps(make_mesh(), *steps, conv_lowering="xla")
    train_step.trace(state, batch)
    eval_step.trace(variables, batch)
    assert conv_choices == ["xla"] * (2 * RESNET18_CONVS)
    conv_choices.clear()
    with lowering.using("xla"):  # "" (the default config's): the choice around the call
        train_step, _ = jit_steps(make_mesh(), *steps, conv_lowering="")
    train_step.trace(state, batch)
    assert conv_choices == ["xla"] * RESNET18_CONVS
    conv_choices.clear()
    jit_steps(make_mesh(), *steps)[0].trace(state, batch)
    assert fast_path(conv_choices), conv_choices


def test_a_bad_conv_lowering_is_named(tmp_path):
    config = tiny_config(steps=4)
    config.conv_lowering = "fast"
    with pytest.raises(ConfigError, match="config key 'conv_lowering': expected one of"):
        train(config, str(tmp_path), log=lambda *a: None)
