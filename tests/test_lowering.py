"""The CPU rewrites of convolution and max-pool against XLA's own ops and torch.

Each lowering (im2col, einsum, per-tap depthwise) must give ``lax.conv_general_dilated``'s output
and gradients (input and kernel) up to float32 summation order; the max-pool's custom VJP must
give torch's gradient, ties (first maximum wins), ceil_mode and padding included.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxvision.layers import lowering
from jaxvision.layers.pool import max_pool2d, max_pool2d_first

pytestmark = pytest.mark.default_lowering  # the rewrites' own tests (tests/conftest.py)



def _grads(impls, x, w, stride, padding, dilation, groups):
    """Output and (input, kernel) gradients for each lowering, all in one compilation."""
    def one(impl, x, w):
        def f(x, w):
            y = lowering.conv2d(x, w, stride, padding, dilation, groups, impl=impl)
            return jnp.sum(y * jnp.cos(y)), y  # a loss whose cotangent varies per element

        (_, y), g = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, w)
        return y, g

    return jax.jit(lambda x, w: [one(impl, x, w) for impl in impls])(x, w)


# (impl, batch, map, cin, cout, kernel, stride, padding, dilation, groups)
CASES = [
    ("im2col", 2, 1, 8, 6, 3, 1, 1, 1, 1),      # 3x3 on a 1x2 map: XLA's naive-loop case
    ("im2col", 2, 1, 8, 6, 3, 2, 1, 1, 1),      # 1x2 -> 1x1: dead taps in rows and columns
    ("im2col", 2, 2, 8, 6, 3, 2, 1, 1, 1),      # 2x3 -> 1x2: the first row of taps is dead
    ("im2col", 2, 2, 8, 6, 3, 1, 1, 1, 1),
    ("im2col", 2, 4, 8, 6, 3, 2, 1, 1, 1),
    ("im2col", 2, 19, 6, 4, 3, 1, 1, 1, 1),     # a large map (the threshold picks xla there)
    ("im2col", 2, 17, 6, 4, 7, 2, 3, 1, 1),     # a resnet-style stem
    ("im2col", 2, 9, 6, 4, 3, 1, 2, 2, 1),      # dilation
    ("im2col", 2, 6, 8, 12, 3, 2, 1, 1, 4),     # groups (resnext)
    ("im2col", 2, 2, 8, 12, 3, 1, 1, 1, 4),     # groups on a 2x2 map (patches by one gather)
    ("im2col", 2, 2, 6, 4, 3, 1, 2, 2, 1),      # dilation on a 2x2 map (gather)
    ("im2col", 2, 3, 8, 8, 3, 1, 1, 1, 8),      # depthwise through im2col
    ("im2col", 1, 8, 4, 6, (1, 3), 1, (0, 1), 1, 1),  # inception's 1x3 / 3x1
    ("einsum", 2, 7, 8, 6, 1, 1, 0, 1, 1),
    ("einsum", 2, 7, 8, 6, 1, 2, 0, 1, 1),      # strided 1x1 (a resnet downsample)
    ("taps", 2, 1, 8, 8, 3, 1, 1, 1, 8),
    ("taps", 2, 1, 8, 8, 3, 2, 1, 1, 8),
    ("taps", 6, 5, 8, 8, 3, 2, 1, 1, 8),        # batch 6: the kernel gradient's fold stops at 3
    ("taps", 2, 13, 8, 8, 5, 2, 2, 1, 8),       # mobilenet_v3's 5x5
    ("taps", 2, 11, 8, 8, 3, 1, 2, 2, 8),       # dilated depthwise (deeplab-style)
    ("taps", 2, 6, 4, 8, 3, 1, 1, 1, 4),        # channel multiplier 2
    ("taps", 2, 7, 4, 8, 3, 2, 1, 1, 4),        # multiplier 2 at stride 2 (jax's input gradient)
    ("taps", 2, 10, 8, 8, 3, 3, 1, 1, 8),       # stride 3: three phases a side
    ("taps", 2, 12, 8, 8, 3, 2, 2, 2, 8),       # stride 2, dilation 2: taps share a phase
    ("taps", 2, 1, 8, 8, 3, 2, 2, 1, 8),        # 1x2 at stride 2, padding 2: the middle row dead
    ("taps", 2, 9, 8, 8, 5, 1, 2, 1, 8),        # 5x5 at stride 1 (mobilenet_v3)
    ("taps", 2, 6, 8, 8, 3, 1, 0, 1, 8),        # no padding: g padded by the whole kernel
    ("xla_tapgrad", 2, 19, 16, 8, 3, 1, 1, 1, 1),   # a large map: per-tap kernel gradient
    ("xla_tapgrad", 2, 20, 16, 8, 3, 2, 1, 1, 1),   # stride 2
    ("xla_tapgrad", 2, 17, 16, 8, 3, 1, 2, 2, 1),   # dilation
    ("xla_tapgrad", 2, 23, 3, 8, 7, 2, 3, 1, 1),    # a stem (few channels: one im2col GEMM)
    ("xla_tapgrad", 1, 12, 16, 8, (1, 7), 1, (0, 3), 1, 1),  # inception's 1x7
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_lowering_matches_lax_conv(case):
    impl, n, hw, cin, cout, k, stride, padding, dilation, groups = case
    kh, kw = (k, k) if isinstance(k, int) else k
    r = np.random.RandomState(0)
    x = jnp.asarray(r.randn(n, hw, hw + 1, cin).astype(np.float32))
    w = jnp.asarray(r.randn(kh, kw, cin // groups, cout).astype(np.float32) / np.sqrt(kh * kw))
    (y, (gx, gw)), (y0, (gx0, gw0)) = _grads((impl, "xla"), x, w, stride, padding, dilation,
                                             groups)
    assert y.shape == y0.shape
    for got, want in ((y, y0), (gx, gx0), (gw, gw0)):
        scale = float(jnp.max(jnp.abs(want))) + 1.0
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                                   atol=2e-5 * scale)


def test_taps_that_read_only_padding_are_skipped():
    assert lowering.live_taps(1, 3, 1, 1, 1, 1) == (1, 2)  # 3x3 on a 1x1 map: the centre only
    assert lowering.live_taps(2, 3, 1, 1, 1, 2) == (0, 3)  # 2x2: every tap reads something
    assert lowering.live_taps(2, 3, 2, 1, 1, 1) == (1, 3)  # 2 -> 1 at stride 2
    assert lowering.live_taps(1, 3, 1, 2, 2, 1) == (1, 2)  # dilation 2, padding 2
    assert lowering.live_taps(56, 7, 2, 3, 1, 28) == (0, 7)
    x, w = jnp.zeros((4, 1, 1, 32)), jnp.zeros((3, 3, 32, 16))
    jaxpr = jax.make_jaxpr(lambda x, w: lowering.conv2d(x, w, 1, 1, impl="im2col"))(x, w)
    (dot,) = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dot.invars[0].aval.shape == (4, 32) and dot.invars[1].aval.shape == (32, 16)


def test_lowering_bfloat16_matches_lax_conv():
    r = np.random.RandomState(1)
    x = jnp.asarray(r.randn(2, 3, 3, 16), jnp.bfloat16)
    w = jnp.asarray(r.randn(3, 3, 16, 8) / 12, jnp.bfloat16)
    y = lowering.conv2d(x, w, 1, 1, impl="im2col")
    y0 = lowering.conv2d(x, w, 1, 1, impl="xla")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y0, np.float32),
                               atol=0.05 * float(jnp.max(jnp.abs(y0.astype(jnp.float32)))))


def test_choice_per_shape(monkeypatch):
    choose = lambda x, k, s=1, p=1, g=1, backend="cpu": lowering.choose(  # noqa: E731
        x, k, (s, s), (p, p), (1, 1), g, backend)
    eigen = bool(lowering.compiler_options("cpu"))  # the AVX-512 CPU's choices, else AVX-only's
    assert choose((8, 2, 2, 512), (3, 3, 512, 512)) == "im2col"
    assert choose((8, 2, 2, 64), (3, 3, 64, 64)) == "im2col"  # 3x3 on 2x2: at any width
    assert choose((8, 7, 7, 512), (3, 3, 512, 512)) == "im2col"  # up to 7x7 from 256 channels
    assert choose((8, 4, 4, 128), (3, 3, 128, 128)) == ("xla" if eigen else "im2col")
    assert choose((8, 8, 8, 64), (3, 3, 64, 128), s=2) == ("xla" if eigen else "im2col")
    assert choose((8, 14, 14, 512), (3, 3, 512, 512)) == "xla"  # 14x14: im2col loses there
    assert choose((8, 56, 56, 64), (3, 3, 64, 64)) == ("xla" if eigen else "xla_tapgrad")
    with monkeypatch.context() as m:  # the other CPU's choices
        m.setattr(lowering, "_eigen_convolutions", lambda backend=None: not eigen)
        assert choose((8, 4, 4, 128), (3, 3, 128, 128)) == ("im2col" if eigen else "xla")
        assert choose((8, 56, 56, 64), (3, 3, 64, 64)) == ("xla_tapgrad" if eigen else "xla")
    assert choose((8, 56, 56, 64), (3, 3, 2, 64), g=32) == "xla"  # grouped, large map
    assert choose((8, 56, 56, 64), (1, 1, 64, 256), p=0) == "einsum"
    assert choose((8, 56, 56, 144), (3, 3, 1, 144), g=144) == "taps"
    assert choose((8, 2, 2, 512), (3, 3, 512, 512), backend="gpu") == "xla"
    with lowering.using("xla"):
        assert choose((8, 2, 2, 512), (3, 3, 512, 512)) == "xla"


def test_wrong_lowering_for_the_shape_is_refused():
    x = jnp.zeros((1, 4, 4, 4))
    with pytest.raises(ValueError, match="1x1"):
        lowering.conv2d(x, jnp.zeros((3, 3, 4, 4)), impl="einsum")
    with pytest.raises(ValueError, match="depthwise"):
        lowering.conv2d(x, jnp.zeros((3, 3, 4, 4)), impl="taps")
    with pytest.raises(ValueError, match="ungrouped"):
        lowering.conv2d(x, jnp.zeros((3, 3, 2, 4)), groups=2, impl="xla_tapgrad")


# (input H, W, kernel, stride, padding, ceil_mode)
POOLS = [(9, 9, 3, 2, 1, False), (9, 10, 3, 2, 0, True), (8, 8, 2, 2, 0, False),
         (7, 7, 3, 1, 1, True), (6, 6, 3, 3, 1, False), (11, 13, 3, 2, 0, False),
         (5, 6, 1, 2, 0, False)]


@pytest.mark.parametrize("pool", POOLS, ids=lambda c: "-".join(map(str, c)))
def test_max_pool_gradient_is_torchs(pool):
    h, w, k, s, p, ceil_mode = pool
    r = np.random.RandomState(2)
    # few distinct values: many windows hold several equal maxima, others one
    x = np.round(r.randn(2, h, w, 3) * 1.5).astype(np.float32)
    f = lambda x: max_pool2d_first(x, k, s, p, ceil_mode)  # noqa: E731
    g = r.randn(*jax.eval_shape(f, jnp.asarray(x)).shape).astype(np.float32)
    # jitted: op-by-op dispatch would compile every small op of the backward separately
    y, dx = jax.jit(lambda x, g: (f(x), jax.vjp(f, x)[1](g)[0]))(jnp.asarray(x), jnp.asarray(g))
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, k, s, p, ceil_mode=ceil_mode)
    yt.backward(torch.tensor(g).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().permute(0, 2, 3, 1).numpy())
    # overlapping windows add their gradients in another order: float32 rounding only
    np.testing.assert_allclose(np.asarray(dx), xt.grad.permute(0, 2, 3, 1).numpy(),
                               rtol=0, atol=1e-6)
    # each window's gradient went to one input, the same as torch's (its first maximum)
    assert np.count_nonzero(np.asarray(dx)) == np.count_nonzero(xt.grad.numpy())


def test_max_pool_first_matches_xla_path():
    x = jnp.asarray(np.random.RandomState(3).randn(2, 11, 11, 4).astype(np.float32))
    f = lambda x: jnp.sum(jnp.sin(max_pool2d_first(x, 3, 2, 1, True)))  # noqa: E731
    y, g = jax.jit(jax.value_and_grad(f))(x)
    f0 = lambda x: jnp.sum(jnp.sin(max_pool2d(x, 3, 2, 1, True)))  # noqa: E731
    with lowering.using("xla"):
        y0, g0 = jax.jit(jax.value_and_grad(f0))(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y0))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=0, atol=1e-6)


def test_max_pool_takes_the_first_maximum_gradient_where_rewrites_are_on():
    x = jnp.zeros((1, 8, 8, 2))
    with lowering.using("auto"):
        auto = str(jax.make_jaxpr(lambda x: max_pool2d(x, 3, 2, 1))(x))
    with lowering.using("xla"):
        xla = str(jax.make_jaxpr(lambda x: max_pool2d(x, 3, 2, 1))(x))
    assert "custom_vjp_call" in auto and "custom_vjp_call" not in xla


def _conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), [(1, 1)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_compiler_options_send_convolutions_past_ynnpack_where_rewrites_are_on():
    with lowering.using("xla"):
        assert lowering.compiler_options("cpu") == {}
    with lowering.using("auto"):
        assert lowering.compiler_options("gpu") == {}
        opts = lowering.compiler_options("cpu")
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((2, 9, 9, 64), np.float32))
    k = jnp.asarray(r.standard_normal((3, 3, 64, 64), np.float32) / 24)
    default = jax.jit(_conv).lower(x, k).compile()
    if "__ynn_fusion" not in default.as_text():  # an XLA or CPU that keeps convolutions to itself
        assert opts == {}
        return
    # jaxlib 0.10.2 on an AVX-512 CPU: its default list, less convolutions
    assert opts == {"xla_cpu_experimental_ynn_fusion_type":
                    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    eigen = jax.jit(_conv, compiler_options=opts).lower(x, k).compile()
    assert "__ynn_fusion" not in eigen.as_text()
    np.testing.assert_allclose(eigen(x, k), default(x, k), rtol=1e-5, atol=1e-5)


def test_fusion_list_is_passed_only_where_it_is_the_default():
    assert not lowering._is_default_ynn_list("LIBRARY_FUSION_TYPE_NO_SUCH_THING", "cpu")
    assert not lowering._is_default_ynn_list("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "cpu")
    assert lowering._compiled_text("cpu", (("xla_cpu_no_such_option", "1"),)) is None


def test_the_probe_answers_alike_when_first_asked_inside_a_trace():
    seen = []
    with lowering.using("auto"):
        outside = lowering.compiler_options("cpu")
        lowering._compiled_text.cache_clear()  # choose() may first run while a model traces
        jax.jit(lambda x: seen.append(lowering.compiler_options("cpu")) or x)(jnp.zeros(2))
    assert seen == [outside]


def test_the_choice_is_a_scoped_context_and_names_a_bad_value():
    assert lowering.current("cpu") == ("auto", "cpu")  # the default, with nothing set
    with lowering.using("xla"):
        assert not lowering.rewrites_on("cpu")
        with lowering.using(""):  # no choice: the enclosing one
            assert lowering.current() == ("xla", jax.default_backend())
        with lowering.using("auto", platform="gpu"):
            assert not lowering.rewrites_on() and lowering.rewrites_on("cpu")
        assert not lowering.rewrites_on("cpu")
    assert lowering.rewrites_on("cpu") and not lowering.rewrites_on("gpu")
    with pytest.raises(ValueError, match="conv_lowering must be one of"):
        with lowering.using("fast"):
            pass
    with pytest.raises(ValueError, match="conv_lowering must be one of"):
        lowering.jit(lambda x: x, "fast")


def test_a_jitted_function_keeps_the_choice_it_was_made_with():
    x, k = jnp.zeros((1, 2, 2, 4)), jnp.zeros((3, 3, 4, 4))
    conv = lambda x, k: lowering.conv2d(x, k, 1, 1)  # noqa: E731
    xla = lowering.jit(conv, "xla")
    with lowering.using("xla"):
        auto = lowering.jit(conv, "auto")
        inherited = lowering.jit(conv)
    # traced outside the blocks they were made in: each still lowers as it was told
    assert "conv_general_dilated" in str(xla.trace(x, k).jaxpr)
    assert "conv_general_dilated" not in str(auto.trace(x, k).jaxpr)  # im2col on the CPU
    assert "conv_general_dilated" in str(inherited.trace(x, k).jaxpr)
