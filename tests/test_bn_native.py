"""BatchNorm's training reductions as custom calls (layers/bn_native.py): the statistics and the
backward's sums against float64, the gradient against torch, and where XLA's stay."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.layers import BatchNorm, bn_native, lowering


def rows64(x):
    return np.asarray(x, np.float64).reshape(-1, x.shape[-1])


# the last two are split over the threads (more than 2^15 values a thread)
SHAPES = [(3, 7, 5, 33), (2, 10), (16, 56, 56, 24), (8, 31, 29, 130)]


@pytest.mark.parametrize("shape", SHAPES)
def test_statistics_and_sums_are_float64s_rounded_once(shape):
    assert bn_native.why_not() is None  # Linux with a C++ compiler: the calls are built
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    mean, var = jax.jit(bn_native.stats)(x)
    want_mean = rows64(x).mean(0)
    np.testing.assert_array_max_ulp(np.asarray(mean), want_mean.astype(np.float32), maxulp=1)
    # the variance around the float32 mean, the one the normalisation subtracts
    dev = rows64(x) - np.asarray(mean, np.float64)
    np.testing.assert_array_max_ulp(np.asarray(var), (dev ** 2).mean(0).astype(np.float32), 1)
    sum_dy, sum_dy_xc = jax.jit(bn_native.grad_sums)(dy, x, mean)
    np.testing.assert_array_max_ulp(np.asarray(sum_dy), rows64(dy).sum(0).astype(np.float32), 1)
    np.testing.assert_array_max_ulp(np.asarray(sum_dy_xc),
                                    (rows64(dy) * dev).sum(0).astype(np.float32), 1)


def train_grads(x, params, stats):
    def loss(x, params):
        y, upd = BatchNorm(momentum=0.3, epsilon=1e-3).apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) ** 2), upd

    return lowering.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))


def test_a_train_step_takes_them_and_matches_the_xla_reductions():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(1.0, 3.0, size=(4, 9, 7, 40)).astype(np.float32))
    params = {"scale": jnp.asarray(rng.uniform(0.5, 2, 40).astype(np.float32)),
              "bias": jnp.asarray(rng.uniform(-1, 1, 40).astype(np.float32))}
    stats = {"mean": jnp.zeros(40), "var": jnp.ones(40)}
    f = train_grads(x, params, stats)
    text = f.lower(x, params).compile().as_text()
    assert "jaxvision_bn_stats" in text and "jaxvision_bn_grad_sums" in text
    (dx, dp), upd = f(x, params)
    # the same function with XLA's reductions (the float32 two-pass of _batch_stats)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bn_native, "usable", lambda *a: False)
        g = train_grads(x, params, stats)
        assert "jaxvision_bn" not in g.lower(x, params).compile().as_text()
        (dx0, dp0), upd0 = g(x, params)
    np.testing.assert_allclose(dx, dx0, rtol=0, atol=2e-5)
    np.testing.assert_allclose(dp["scale"], dp0["scale"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dp["bias"], dp0["bias"], rtol=1e-5, atol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), upd, upd0)


def test_not_taken_off_float32_or_with_several_devices(monkeypatch):
    x = jnp.ones((2, 3, 3, 4))
    assert bn_native.usable(x, "cpu")
    assert not bn_native.usable(x.astype(jnp.bfloat16), "cpu")
    assert not bn_native.usable(x, "gpu")
    monkeypatch.setattr(jax, "device_count", lambda *a: 4)
    assert not bn_native.usable(x, "cpu")  # a custom call would gather a sharded batch


@pytest.fixture
def fresh(monkeypatch):
    bn_native._load.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    bn_native._load.cache_clear()


def test_opt_out_and_a_failed_build_keep_xlas_reductions(fresh, tmp_path):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, 3)).astype(np.float32))
    fresh.setenv(bn_native.ENV, "0")
    assert bn_native.why_not() == "JAXVISION_CPU_BN_STATS=0"
    assert not bn_native.usable(x, "cpu")
    with pytest.raises(RuntimeError, match="JAXVISION_CPU_BN_STATS=0"):
        bn_native.stats(x)
    # a fresh cache and a compiler that fails: one warning naming the source; BatchNorm trains
    bn_native._load.cache_clear()
    fresh.delenv(bn_native.ENV)
    fresh.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh.setenv("CXX", "false")
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x)
    with pytest.warns(RuntimeWarning, match="bn_stats_cpu.cc failed") as caught:
        y, _ = bn.apply(v, x, train=True, mutable=["batch_stats"])
        bn_native.usable(x, "cpu")
    assert len(caught) == 1
    want = (x - x.mean((0, 1, 2))) / jnp.sqrt(x.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(y, want, atol=1e-5)
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))


def test_a_gradient_of_the_gradient_goes_through_them():
    """The backward is made of the calls; their derivatives are XLA's reductions (a gradient
    penalty, as in WGAN-GP: the gradient of the input gradient's norm)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(1.0, 2.0, size=(3, 5, 4, 6)).astype(np.float32))
    params = {"scale": jnp.asarray(rng.uniform(0.5, 2, 6).astype(np.float32)),
              "bias": jnp.asarray(rng.uniform(-1, 1, 6).astype(np.float32))}
    stats = {"mean": jnp.zeros(6), "var": jnp.ones(6)}

    def penalty(params, x):
        def out(x):
            y, _ = BatchNorm().apply({"params": params, "batch_stats": stats}, x, train=True,
                                     mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y) ** 2)

        return jnp.sum(jax.grad(out)(x) ** 2)

    f = lowering.jit(jax.grad(penalty, argnums=(0, 1)))
    assert "jaxvision_bn_grad_sums" in f.lower(params, x).compile().as_text()
    got = f(params, x)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bn_native, "usable", lambda *a: False)
        want = lowering.jit(jax.grad(penalty, argnums=(0, 1)))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4), got, want)
    # and forward mode through the statistics
    t = jax.jvp(bn_native.stats, (x,), (jnp.ones_like(x),))[1]
    np.testing.assert_allclose(t[0], np.ones(6), rtol=1e-6)
    np.testing.assert_allclose(t[1], np.zeros(6), atol=1e-5)
