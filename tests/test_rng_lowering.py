"""An initialisation compiled with threefry as a custom call, or unrolled, gives jax's own
numbers, bit for bit."""
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


def compiled(jitted, parameters, *args):
    return jitted.trace(*args).lower(_private_parameters=parameters).compile()(*args)


def native():
    assert rng_lowering.why_not() is None  # Linux with a C++ compiler: the call is built
    return rng_lowering.parameters()


LOWERINGS = {"custom call": native, "unrolled": lambda: rng_lowering._UNROLLED}


@pytest.fixture(scope="module")
def init():
    model = Mixed()
    return model, jax.jit(lambda k, x: model.init(k, x)), (jax.random.key(3), jnp.ones((2, 6, 6, 4)))


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_the_parameters_and_dropout_are_jaxs_bit_for_bit(init, lowering):
    model, jitted, args = init
    params = LOWERINGS[lowering]()
    got, want = compiled(jitted, params, *args), compiled(jitted, ROLLED, *args)
    leaves = jax.tree.leaves(want)
    # random: both convolution tensors, both kernels, the normal bias; zeros: the other bias
    assert len(leaves) == 6 and sum(float(jnp.std(v)) > 0 for v in leaves) == 5
    jax.tree.map(np.testing.assert_array_equal, got, want)
    step = jax.jit(lambda k, x: model.apply(want, x, train=True, rngs={"dropout": k}))
    got, want = compiled(step, params, jax.random.key(9), args[1]), compiled(
        step, ROLLED, jax.random.key(9), args[1])
    assert 0 < int(jnp.sum(want == 0)) < want.size  # some dropped, some kept
    np.testing.assert_array_equal(got, want)


def test_every_kind_of_draw_is_jaxs_through_the_call():
    """Bits of 8, 16 and 32 bits in odd shapes, one large enough to be split over XLA's threads,
    splits and fold-ins, a batch of keys (one key pair per element in the call) and the empty
    draw."""
    def draws(key, keys):
        return (jax.random.bits(key, (3, 5, 7), jnp.uint32),
                jax.random.bits(jax.random.fold_in(key, 11), (13,), jnp.uint8),
                jax.random.bits(key, (2, 3), jnp.uint16),
                jax.random.key_data(jax.random.split(key, (2, 3))),
                jax.vmap(lambda k: jax.random.bits(k, (4,), jnp.uint32))(keys),
                jax.random.key_data(jax.vmap(jax.random.fold_in)(keys, jnp.arange(6))),
                jax.random.normal(key, (0, 4)), jax.random.bits(key, (301, 1001), jnp.uint32))

    jitted, args = jax.jit(draws), (jax.random.key(5), jax.random.split(jax.random.key(6), 6))
    text = jitted.trace(*args).lower(_private_parameters=native()).as_text()
    assert "stablehlo.while" not in text and "jaxvision_threefry2x32" in text
    got, want = compiled(jitted, native(), *args), compiled(jitted, ROLLED, *args)
    assert len(set(np.asarray(got[0]).ravel().tolist())) == 105  # not a constant
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_the_loops_are_gone_only_where_asked(init):
    _, jitted, args = init
    traced = jitted.trace(*args)
    assert "stablehlo.while" in traced.lower(_private_parameters=ROLLED).as_text()
    unrolled = traced.lower(_private_parameters=rng_lowering._UNROLLED).as_text()
    assert "stablehlo.while" not in unrolled and "shift_left" in unrolled



def test_install_makes_the_call_every_programs_lowering():
    """conftest installed it for the session: a dropout program compiled the plain way hashes
    by the call, with jax's bits."""
    model = Mixed()
    x = jnp.ones((2, 6, 6, 4))
    variables = compiled(jax.jit(model.init), ROLLED, jax.random.key(3), x)
    step = jax.jit(lambda k: model.apply(variables, x, train=True, rngs={"dropout": k}))
    assert "jaxvision_threefry2x32" in step.trace(jax.random.key(9)).lower().as_text()
    np.testing.assert_array_equal(step(jax.random.key(9)),
                                  compiled(step, ROLLED, jax.random.key(9)))


def test_inside_another_trace_it_is_jaxs_call(init):
    _, jitted, args = init
    outer = jax.jit(lambda k, x: rng_lowering.call(jitted, k, x))
    jax.tree.map(np.testing.assert_array_equal, outer(*args),
                 compiled(jitted, ROLLED, *args))


@pytest.fixture
def fresh(monkeypatch):
    """``rng_lowering`` deciding again under the test's environment, and as before after it."""
    rng_lowering._native.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    rng_lowering._native.cache_clear()


def test_opt_out_and_a_failed_build_fall_back_to_the_unrolled_hash(init, fresh, tmp_path):
    _, jitted, args = init
    want = compiled(jitted, ROLLED, *args)
    fresh.setenv(rng_lowering.ENV, "0")
    assert rng_lowering.why_not() == "JAXVISION_CPU_THREEFRY=0"
    assert rng_lowering.parameters() is rng_lowering._UNROLLED
    jax.tree.map(np.testing.assert_array_equal, rng_lowering.call(jitted, *args), want)
    # a fresh cache and a compiler that fails: one warning naming the source, the same numbers
    rng_lowering._native.cache_clear()
    fresh.delenv(rng_lowering.ENV)
    fresh.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh.setenv("CXX", "false")
    with pytest.warns(RuntimeWarning, match="threefry_cpu.cc failed") as caught:
        got = rng_lowering.call(jitted, *args)
        rng_lowering.call(jitted, *args)
    assert len(caught) == 1
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))


def test_the_commands_install_it_for_their_process(monkeypatch, capsys):
    from jaxvision import cli

    calls = []
    monkeypatch.setattr(rng_lowering, "install", lambda: calls.append("install") or True)
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert calls == ["install"] and "workdir" in capsys.readouterr().out
