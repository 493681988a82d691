"""layers/dot_library.py: a program's dots go to Eigen when large GEMMs make most of its FLOPs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.layers import dot_library, lowering

R = np.random.default_rng(0)
BIG = jnp.asarray(R.standard_normal((1024, 512), np.float32))  # rows 1024, widths 512: large
W = jnp.asarray(R.standard_normal((512, 512), np.float32) / 23)
SMALL = jnp.asarray(R.standard_normal((64, 512), np.float32))  # 64 rows: not


def _mlp(x, w):
    return jnp.tanh(jnp.tanh(x @ w) @ w)[0]  # no reduction: YNNPACK keeps those either way


def test_share_counts_flops_of_large_gemms_and_scan_bodies():
    assert dot_library.big_gemm_share(jax.make_jaxpr(_mlp)(BIG, W)) == 1.0
    assert dot_library.big_gemm_share(jax.make_jaxpr(_mlp)(SMALL, W)) == 0.0
    assert dot_library.big_gemm_share(jax.make_jaxpr(jnp.tanh)(W)) == 0.0  # no dots

    def both(big, small, w):  # one large product, one small one repeated 64 times in a scan
        body = lambda c, _: (jnp.tanh(c @ w), None)  # noqa: E731
        return _mlp(big, w), jax.lax.scan(body, small, None, length=64)[0]

    # 2 * 1024 * 512 * 512 * 2 FLOPs in the large pair, 64 * 2 * 64 * 512 * 512 in the scan
    share = dot_library.big_gemm_share(jax.make_jaxpr(both)(BIG, SMALL, W))
    assert share == pytest.approx(2 * 1024 / (2 * 1024 + 64 * 64))


def _eigen_where_it_applies():
    with lowering.using("auto"):
        ynn = lowering.compiler_options("cpu")
        eigen = lowering.compiler_options("cpu", dots_in_eigen=True)
    return ynn, eigen


def test_lowering_jit_chooses_the_dot_library_from_the_first_program():
    ynn, eigen = _eigen_where_it_applies()
    big, small = lowering.jit(_mlp, platform="cpu"), lowering.jit(_mlp, platform="cpu")
    if ynn == eigen:  # a CPU / XLA without YNNPACK's fusions: plain jax.jit, nothing to choose
        assert not isinstance(big, dot_library.DotChoice)
        return
    assert eigen == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    assert big.dots_in_eigen is None  # nothing traced yet
    out_big, out_small = big(BIG, W), small(SMALL, W)
    assert big.dots_in_eigen and not small.dots_in_eigen
    assert "__ynn_fusion" not in big.lower(BIG, W).compile().as_text()
    assert "__ynn_fusion" in small.lower(SMALL, W).compile().as_text()
    np.testing.assert_allclose(out_big, jax.jit(_mlp)(BIG, W), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out_small, jax.jit(_mlp)(SMALL, W), rtol=1e-5, atol=1e-4)
    # the choice is made once: later shapes keep it
    assert big(SMALL, W).shape == (512,) and big.dots_in_eigen


def test_a_program_kept_in_ynnpack_is_traced_once():
    calls = []

    def counted(x, w):
        calls.append(1)
        return _mlp(x, w)

    f = lowering.jit(counted, platform="cpu")
    f(SMALL, W)
    f(SMALL, W)
    assert len(calls) == 1


def test_explicit_fusion_options_are_left_alone():
    opts = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    f = lowering.jit(_mlp, platform="cpu", compiler_options=opts)
    assert not isinstance(f, dot_library.DotChoice)
    np.testing.assert_allclose(f(SMALL, W), jax.jit(_mlp)(SMALL, W), rtol=1e-5, atol=1e-4)
