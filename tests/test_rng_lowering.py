"""An initialisation compiled with threefry unrolled gives jax's own numbers, bit for bit."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32

from jaxvision.layers import Conv2d, rng_lowering

# jax's CPU lowering (5-trip loops), named explicitly: the comparison holds whatever lowering
# the process's jax defaults to
ROLLED = mlir.LoweringParameters(override_lowering_rules=(
    (threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_cpu_lowering_rule),))


class Mixed(nn.Module):
    """Each of flax's and jaxvision's initialiser kinds, and dropout's bits."""

    @nn.compact
    def __call__(self, x, train=False):
        x = Conv2d(5, 3, padding=1, bias=True, in_features=4)(x)  # kaiming normal, torch's default bias
        x = nn.Dense(7, kernel_init=nn.initializers.truncated_normal(0.02))(x)
        x = nn.Dense(3, kernel_init=nn.initializers.uniform(0.5),
                     bias_init=nn.initializers.normal(1.0))(x)
        return nn.Dropout(0.5, deterministic=not train)(x)


def rolled(jitted, *args):
    return jitted.trace(*args).lower(_private_parameters=ROLLED).compile()(*args)


@pytest.fixture(scope="module")
def init():
    model = Mixed()
    return model, jax.jit(lambda k, x: model.init(k, x)), (jax.random.key(3), jnp.ones((2, 6, 6, 4)))


def test_the_parameters_are_jaxs_bit_for_bit(init):
    _, jitted, args = init
    assert rng_lowering._PARAMETERS is not None  # this jax has the private paths it uses
    got, want = rng_lowering.call(jitted, *args), rolled(jitted, *args)
    leaves = jax.tree.leaves(want)
    # random: both convolution tensors, both kernels, the normal bias; zeros: the other bias
    assert len(leaves) == 6 and sum(float(jnp.std(v)) > 0 for v in leaves) == 5
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_the_loops_are_gone_only_where_asked(init):
    _, jitted, args = init
    traced = jitted.trace(*args)
    assert "stablehlo.while" in traced.lower(_private_parameters=ROLLED).as_text()
    unrolled = traced.lower(_private_parameters=rng_lowering._PARAMETERS).as_text()
    assert "stablehlo.while" not in unrolled and "shift_left" in unrolled


def test_dropout_bits_are_jaxs_too(init):
    model, jitted, args = init
    variables = rng_lowering.call(jitted, *args)
    step = jax.jit(lambda k, x: model.apply(variables, x, train=True, rngs={"dropout": k}))
    got = rng_lowering.call(step, jax.random.key(9), args[1])
    want = rolled(step, jax.random.key(9), args[1])
    assert 0 < int(jnp.sum(want == 0)) < want.size  # some dropped, some kept
    np.testing.assert_array_equal(got, want)


def test_inside_another_trace_it_is_jaxs_call(init):
    _, jitted, args = init
    outer = jax.jit(lambda k, x: rng_lowering.call(jitted, k, x))
    jax.tree.map(np.testing.assert_array_equal, outer(*args), rolled(jitted, *args))
