"""layers.dense's product and layers.grad_barrier: the same values and gradients as jax's own
differentiation of the plain expressions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.layers import lowering
from jaxvision.layers.dense import dense
from jaxvision.layers.lowering import dense_dot_general
from jaxvision.layers.grad_barrier import grad_barrier


def test_dense_gradients_equal_autodiff():
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 5, 7))
    k = jax.random.normal(kk, (7, 4))
    g = jax.random.normal(kg, (3, 5, 4))
    def value_and_vjp(f):  # one compiled program per side: eager dispatch costs more here
        return jax.jit(lambda: (lambda y, vjp: (y, vjp(g)))(*jax.vjp(f, x, k)))()

    y, grads = value_and_vjp(dense)
    y_ref, grads_ref = value_and_vjp(lambda a, b: a @ b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for ours, ref in zip(grads, grads_ref):
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_dense_dot_general_refuses_other_products():
    x, k = jnp.ones((2, 3)), jnp.ones((3, 4))
    assert dense_dot_general(x, k, (((1,), (0,)), ((), ()))).shape == (2, 4)
    with pytest.raises(ValueError, match="inputs' last axis"):
        dense_dot_general(x, k.T, (((1,), (1,)), ((), ())))
    with pytest.raises(ValueError, match="default precision"):
        dense_dot_general(x, k, (((1,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("first", [1.5, float("nan")])
def test_grad_barrier_passes_the_cotangent_unchanged(first):
    x = jnp.arange(6.0).reshape(2, 3)
    g = jnp.array([[first, -2.0, 0.5], [3.0, 1e-30, -7.0]])
    y, vjp = jax.vjp(grad_barrier, x)
    np.testing.assert_array_equal(y, x)
    # jitted, as in a train step (the conditional is XLA's); the NaN branch keeps g's values
    (gx,) = jax.jit(vjp)(g)
    np.testing.assert_array_equal(gx, g)


def test_forward_mode_under_the_xla_lowering():
    # reverse mode only on the CPU rewrites' path (custom VJPs), jax's own ops under "xla"
    x, k = jnp.ones((2, 3)), jnp.full((3, 4), 0.5)
    dims = (((1,), (0,)), ((), ()))
    f = lambda a: grad_barrier(dense_dot_general(a, k, dims))  # noqa: E731
    with lowering.using("xla"):
        _, tangent = jax.jvp(f, (x,), (x,))
    np.testing.assert_allclose(tangent, x @ k)
    if lowering.rewrites_on():
        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(f, (x,), (x,))
