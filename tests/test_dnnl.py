"""oneDNN's convolutions (layers/dnnl.py) against XLA's: each piece, their gradients to second
order, the batch split across threads, the choice of pieces, and the fallback when they cannot
be built. Models run them on the default path in every parity test (test_mobilenet.py etc.)."""
import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxvision.layers import dnnl, lowering

LINUX_X86 = sys.platform.startswith("linux") and platform.machine() == "x86_64"


def test_available_where_the_dependency_installs():
    # the onednn wheels are a dependency on Linux x86-64: failing to build there is a defect
    if LINUX_X86:
        assert dnnl.why_not() is None
    else:
        assert not dnnl.available()


needs_dnnl = pytest.mark.skipif(not LINUX_X86, reason="oneDNN's wheels are Linux x86-64 only")


def _lax(x, k, stride, padding, dilation, groups):
    return lax.conv_general_dilated(x, k, stride, [(p, p) for p in padding], rhs_dilation=dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=groups)


# n, h, w, cin, k, cout, stride, padding, dilation, groups
GEOMETRIES = [
    (3, 9, 9, 8, 3, 16, 1, 1, 1, 1),     # batch 3: uneven chunks
    (1, 10, 11, 6, 3, 12, 2, 1, 1, 1),   # batch 1: oneDNN's own threads; odd, strided
    (2, 9, 9, 8, 3, 8, 1, 2, 2, 1),      # dilated
    (2, 8, 8, 12, 3, 12, 2, 1, 1, 12),   # depthwise, strided
    (2, 8, 8, 12, 5, 24, 1, 2, 1, 12),   # depthwise 5x5, channel multiplier 2
    (2, 8, 8, 12, 3, 24, 1, 1, 1, 3),    # grouped
    (2, 17, 17, 3, 7, 5, 2, 3, 1, 1),    # a stem
    (2, 5, 5, 16, 1, 8, 2, 0, 1, 1),     # strided 1x1
]


@needs_dnnl
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_each_piece_and_its_gradients_match_xla(geometry):
    n, h, w, cin, k, cout, s, p, d, g = geometry
    r = np.random.RandomState(0)
    x = jnp.asarray(r.randn(n, h, w, cin), jnp.float32)
    kernel = jnp.asarray(r.randn(k, k, cin // g, cout) / k, jnp.float32)
    args = ((s, s), (p, p), (d, d), g)
    spec = dnnl.window(*args, x.shape, kernel.shape)
    y = _lax(x, kernel, *args)
    c = jnp.asarray(r.randn(*y.shape), jnp.float32)

    def pieces(conv):  # the forward, its two gradients, and one second-order gradient
        y, vjp = jax.vjp(conv, x, kernel)
        dx, dk = vjp(c)
        second = jax.grad(lambda x, k: jnp.sum(jnp.sin(jax.vjp(conv, x, k)[1](c)[0])),
                          argnums=(0, 1))(x, kernel)
        return y, dx, dk, *second

    ours = jax.jit(pieces, static_argnums=0)(lambda x, k: dnnl.forward(spec, x, k))
    theirs = jax.jit(pieces, static_argnums=0)(lambda x, k: _lax(x, k, *args))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))
    # the two gradients called directly, as lowering's custom VJP does
    dx, dk = jax.jit(lambda c: (dnnl.input_grad(spec, c, kernel), dnnl.kernel_grad(spec, x, c)))(c)
    np.testing.assert_allclose(dx, theirs[1], rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(dx))))
    np.testing.assert_allclose(dk, theirs[2], rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(dk))))


@needs_dnnl
def test_vmap_and_the_lowering_path_match_xla():
    r = np.random.RandomState(1)
    x = jnp.asarray(r.randn(2, 2, 8, 8, 16), jnp.float32)
    kernel = jnp.asarray(r.randn(3, 3, 1, 16) / 3, jnp.float32)
    conv = lambda x: lowering.conv2d(x, kernel, 1, 1, groups=16)  # noqa: E731
    assert lowering.dnnl_pieces(x.shape[1:], kernel.shape, (1, 1), (1, 1), (1, 1), 16)
    got = jax.jit(jax.vmap(conv))(x)
    want = jax.vmap(lambda x: _lax(x, kernel, (1, 1), (1, 1), (1, 1), 16))(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_dnnl
def test_pieces_chosen_per_shape(monkeypatch):
    pieces = lambda x, k, s=1, p=1, g=1, dtype=jnp.float32, backend="cpu": (  # noqa: E731
        lowering.dnnl_pieces(x, k, (s, s), (p, p), (1, 1), g, dtype, backend))
    every = ("forward", "input", "kernel")
    assert pieces((16, 56, 56, 144), (3, 3, 1, 144), g=144) == every  # depthwise
    assert pieces((16, 224, 224, 3), (7, 7, 3, 64), s=2, p=3) == every  # a stem
    assert pieces((16, 224, 224, 3), (16, 16, 3, 768), s=16, p=0) == ("input",)  # ViT's patches
    assert pieces((16, 56, 56, 64), (1, 1, 64, 256), p=0) == ()
    assert pieces((16, 56, 56, 64), (3, 3, 64, 64)) == ("input",)
    assert pieces((16, 2, 2, 512), (3, 3, 512, 512)) == ()  # im2col's smallest maps
    assert pieces((16, 56, 56, 64), (3, 3, 2, 64), g=32) == ()  # grouped: not measured
    assert pieces((16, 56, 56, 144), (3, 3, 1, 144), g=144, dtype=jnp.bfloat16) == ()
    assert pieces((16, 56, 56, 144), (3, 3, 1, 144), g=144, backend="gpu") == ()
    with lowering.using("xla"):
        assert pieces((16, 56, 56, 144), (3, 3, 1, 144), g=144) == ()
    monkeypatch.setattr(jax, "device_count", lambda backend=None: 2)
    assert pieces((16, 56, 56, 144), (3, 3, 1, 144), g=144) == ()


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


@needs_dnnl
def test_opt_out_and_a_failed_build_fall_back_to_xla(tmp_path):
    check = """
        import warnings
        warnings.simplefilter("always")
        import jax, jax.numpy as jnp
        from jaxvision.layers import dnnl, lowering
        x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
        print("pieces", lowering.dnnl_pieces(x.shape, k.shape, (1, 1), (1, 1), (1, 1), 4))
        print("sum", float(lowering.conv2d(x, k, 1, 1, groups=4).sum()))
        print("why", dnnl.why_not())
    """
    off = _python(check, JAXVISION_DNNL="0")
    assert off.returncode == 0, off.stderr
    assert "pieces ()" in off.stdout and "sum 3872.0" in off.stdout
    assert "why JAXVISION_DNNL=0" in off.stdout and "RuntimeWarning" not in off.stderr
    # a fresh cache and a compiler that fails: one warning naming the source, XLA's result
    broken = _python(check, XDG_CACHE_HOME=str(tmp_path), CXX="false")
    assert broken.returncode == 0, broken.stderr
    assert "pieces ()" in broken.stdout and "sum 3872.0" in broken.stdout
    assert broken.stderr.count("oneDNN's convolutions are off") == 1, broken.stderr
    assert "dnnl_conv.cc failed" in broken.stderr
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))
