"""layers.params.param: Flax's parameter semantics without its abstract re-initialisation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import errors

from jaxvision.layers import Conv2d, BatchNorm
from jaxvision.layers import conv as conv_lib, norm as norm_lib


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = Conv2d(4, 3, padding=1, bias=True, name="conv")(x)
        return BatchNorm(name="bn")(x, train)


def test_apply_reads_the_stored_parameters_without_tracing_their_initialisers(monkeypatch):
    net, x = Net(), jnp.ones((1, 5, 5, 2))
    variables = net.init(jax.random.key(0), x)
    calls = []
    orig = jax.eval_shape
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: calls.append(a) or orig(*a, **k))
    scaled = jax.tree.map(lambda a: a * 2.0, variables)
    got = jax.jit(net.apply)(scaled, x)
    assert not calls
    # Flax's own lookup: the same modules through module.param, which traces each initialiser
    flax_param = lambda m, n, i, s, d=jnp.float32: m.param(n, i, s, d)
    monkeypatch.setattr(conv_lib, "param", flax_param)
    monkeypatch.setattr(norm_lib, "param", flax_param)
    want = jax.jit(net.apply)(scaled, x)
    np.testing.assert_array_equal(got, want)
    assert len(calls) == 4  # conv kernel and bias, bn scale and bias


def test_a_parameter_of_another_shape_gets_flaxs_error():
    net, x = Net(), jnp.ones((1, 5, 5, 2))
    variables = net.init(jax.random.key(0), x)
    bad = jax.tree_util.tree_map(lambda a: a, variables)
    bad["params"]["conv"]["kernel"] = jnp.zeros((3, 3, 2, 5))
    shapes = r"kernel.*/conv.*\(3, 3, 2, 4\).*\(3, 3, 2, 5\)"  # expected, then given
    with pytest.raises(errors.ScopeParamShapeError, match=shapes):
        net.apply(bad, x)


def test_a_missing_parameter_and_remat_behave_as_in_flax():
    net, x = Net(), jnp.ones((1, 5, 5, 2))
    variables = net.init(jax.random.key(0), x)
    missing = {"params": {"conv": variables["params"]["conv"]},
               "batch_stats": variables["batch_stats"]}
    with pytest.raises(errors.ScopeParamNotFoundError, match="scale"):
        net.apply(missing, x)
    remat = nn.remat(Net)()
    np.testing.assert_array_equal(remat.apply(variables, x), net.apply(variables, x))
