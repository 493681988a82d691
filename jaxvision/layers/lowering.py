"""How a 2-d convolution is lowered, chosen per call from static shapes and the backend.

XLA:CPU (jaxlib 0.10.2) has three slow spots that model code can route around:

* a convolution whose kernel is larger than its (padded) input map, e.g. a 3x3 on the 2x2 and
  1x1 maps of a ResNet at 32 px, has its operands swapped (``ConvOperandSwapper``) and runs in
  XLA's naive element-wise loop, forward and input gradient alike;
* 1x1 convolutions' weight gradients go through large transpose copies;
* depthwise convolutions run in a generic grouped loop.

The alternatives below are exact rewrites of the same sums (only the order of float additions
changes): ``im2col`` (pad + one strided slice per kernel tap + one ``dot``), ``einsum`` for
ungrouped 1x1 convolutions (stride by slicing; the product is ``layers/dense.py``'s) and
``taps`` for depthwise convolutions (one multiply-add per kernel tap, ``layers/taps.py``).
They are the default on the CPU backend wherever a model is traced (``create_model(...).apply``
in user code, the engine, the run tools, the bench); on GPU and TPU every convolution stays
``lax.conv_general_dilated`` (cuDNN...), and where the rewrites are on ``pool.max_pool2d``
takes its gradient from ``pool.max_pool2d_first`` too.

``"xla"`` keeps XLA's convolution everywhere: a run's ``config.conv_lowering``, ``jaxvision
bench --lowering``, or ``with lowering.using("xla"):`` around a trace. The choice lives in a
context variable that only ``using`` sets, for the block and the thread it runs in; ``jit``
binds one to a jitted function, so that its trace sees it whenever it happens. jax reuses a
function's trace for arguments of the same shapes whatever this context says: a function
traced once keeps the lowering of that trace (trace a new one, or bind it with ``jit``).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvision.layers import dnnl
from jaxvision.layers.dense import contract_last, dense
from jaxvision.layers.dot_library import DotChoice
from jaxvision.layers.taps import depthwise, tap_views

IMPLS = ("xla", "im2col", "einsum", "taps", "xla_tapgrad")

# Two CPUs were measured, and the choices below differ between them: an AVX-only one whose XLA
# kept convolutions to itself, and the AVX-512 one whose XLA sends them to YNNPACK by default,
# where compiler_options() hands them to Eigen instead ("eigen" below: _eigen_convolutions).
# The per-layer timings behind each threshold are in docs/performance.md ("The measurements
# behind layers/lowering.py"); re-measure them before trusting a threshold on another CPU.
# im2col on the AVX-512 CPU:
# * always when the output map has at most half a position per kernel tap (3x3: 2x2 and 1x1),
#   where XLA's convolution falls into its naive loop;
# * up to this many positions per tap (3x3: maps up to 7x7) only from IM2COL_MIN_CHANNELS input
#   channels: narrower ones are Eigen's there, and from 14x14 up im2col loses at any width.
# On the AVX-only CPU im2col was ahead from 8x8 down at any width.
IM2COL_ALWAYS_POSITIONS_PER_TAP = 0.5
IM2COL_MAX_POSITIONS_PER_TAP = 6
IM2COL_MIN_CHANNELS = 256

# the kernel gradient as per-tap GEMMs from output maps of this many positions up (20x20), on
# the AVX-only CPU, where XLA's kernel gradient cost 3-5x its forward. With Eigen on the
# AVX-512 one XLA's own kernel gradient is the faster, so this is not chosen there.
TAPGRAD_MIN_POSITIONS = 400

# oneDNN's pieces (dnnl_pieces): every piece of a depthwise convolution and of a stem (fewer
# input channels than this), and the input gradient of other ungrouped ones but 1x1s. Measured
# on an AVX2 CPU (docs/performance.md, "oneDNN's convolutions").
DNNL_PIECES = ("forward", "input", "kernel")
DNNL_STEM_CHANNELS = 16


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


MODES = ("auto", "xla")
DEFAULT_MODE = "auto"

# (mode, platform) of the traces in this context, or None for (DEFAULT_MODE, the default
# backend). Only ``using`` sets it, and puts the previous value back when its block ends.
_context = contextvars.ContextVar("jaxvision_conv_lowering", default=None)


def check_mode(mode, field: str = "conv_lowering") -> str | None:
    """``mode`` if it is one of MODES; None for None or "" (no choice: the enclosing one)."""
    if mode in (None, ""):
        return None
    if mode not in MODES:
        raise ValueError(f"{field} must be one of {MODES} (or '' for the default, "
                         f"{DEFAULT_MODE!r}), got {mode!r}")
    return mode


def current(platform=None) -> tuple[str, str]:
    """(mode, platform) that a convolution traced here gets: ``platform`` if given, else the
    enclosing ``using``'s, else ``jax.default_backend()``."""
    mode, where = _context.get() or (DEFAULT_MODE, None)
    return mode, platform or where or jax.default_backend()


@contextlib.contextmanager
def using(mode=None, platform=None):
    """Convolutions traced in this block (in this thread) lower by ``mode`` ("auto" / "xla";
    None or "": the enclosing choice) for ``platform`` (None: the enclosing one, else the
    default backend)."""
    mode = check_mode(mode)
    outer_mode, outer_platform = _context.get() or (None, None)
    token = _context.set((mode or outer_mode or DEFAULT_MODE, platform or outer_platform))
    try:
        yield
    finally:
        _context.reset(token)


def rewrites_on(platform=None) -> bool:
    """Whether the CPU rewrites apply to a convolution traced here (``current``)."""
    mode, platform = current(platform)
    return mode == "auto" and platform == "cpu"


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``flax.linen.Dense``'s ``dot_general`` hook: its contraction of the inputs' last axis
    with the kernel's first, through ``layers.dense.dense`` where the rewrites are on."""
    last = lhs.ndim - 1
    if dimension_numbers != (((last,), (0,)), ((), ())) or precision is not None \
            or preferred_element_type is not None:
        raise ValueError("dense_dot_general: only Dense's own product (the inputs' last axis "
                         f"with the kernel's first, default precision), got {dimension_numbers}")
    return dense(lhs, rhs) if rewrites_on() else contract_last(lhs, rhs)


def jit(fun, conv_lowering=None, platform=None, **jit_kwargs):
    """``jax.jit(fun, ...)`` whose trace lowers convolutions by ``conv_lowering`` (None or "":
    the choice around this call) for ``platform`` (None: the device it compiles for is the
    default backend's), with the matching ``compiler_options`` added to any given."""
    mode, platform = current(platform)
    mode = check_mode(conv_lowering) or mode

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with using(mode, platform):
            return fun(*args, **kwargs)

    given = jit_kwargs.pop("compiler_options", {})
    with using(mode, platform):
        ynn, eigen = compiler_options(platform), compiler_options(platform, dots_in_eigen=True)
    default = jax.jit(traced, compiler_options={**ynn, **given}, **jit_kwargs)
    if ynn == eigen or _YNN_OPTION in given:
        return default
    # dots in YNNPACK or in Eigen: whichever the traced program's products favour
    return DotChoice(default, lambda: jax.jit(traced, compiler_options={**eigen, **given},
                                              **jit_kwargs))


# jaxlib 0.10.2's XLA:CPU hands each convolution to YNNPACK on the AVX-512 CPU measured here (on
# an AVX-only one measured earlier it apparently did not), and YNNPACK keeps one core busy for any
# convolution of up to 80 output channels: ResNet's stem and layer1. Eigen's convolution, what
# XLA runs without that fusion, keeps both busy and was nowhere slower on resnet50's shapes
# (docs/performance.md, "The measurements behind layers/lowering.py"). The option
# takes a whole list, not a change to the default, so it is passed only where the default is
# known to be this list (a probe compiles the same either way), and then without convolutions.
_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_YNN_DEFAULT = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE",
                "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")


def _probe(x, k, w):
    y = jax.nn.relu(_lax_conv(x, k, (1, 1), (1, 1), (1, 1)) * 1.5 + 0.1)
    z = jnp.einsum("nhwc,cf->nhwf", y, w)
    return z.sum(axis=(1, 2)), jnp.tanh(z).max()


@functools.lru_cache(maxsize=None)
def _compiled_text(backend: str, opts: tuple):
    """The probe's optimized HLO (metadata dropped) under these options; None if refused."""
    try:
        # abstract and placed on the backend's device: safe inside another trace
        device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend=backend)[0])
        args = [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=device)
                for shape in ((2, 9, 9, 64), (3, 3, 64, 64), (64, 128))]
        text = jax.jit(_probe, compiler_options=dict(opts)).lower(*args).compile().as_text()
    except Exception:  # noqa: BLE001  (an unknown option or enum value, a backend without one)
        return None
    return re.sub(r"metadata=\{[^}]*\}", "", text)


def _is_default_ynn_list(value: str, backend: str) -> bool:
    """Whether XLA compiles the probe with ``value`` as it does with no option at all."""
    default = _compiled_text(backend, ())
    return default is not None and default == _compiled_text(backend, ((_YNN_OPTION, value),))


def _eigen_convolutions(platform=None) -> bool:
    """Whether compiler_options() moves this platform's convolutions from YNNPACK to Eigen."""
    return bool(compiler_options(platform))


def compiler_options(platform=None, dots_in_eigen: bool = False) -> dict:
    """``jax.jit(..., compiler_options=...)`` for a step traced here (``jit`` adds them): where
    the CPU rewrites are on (``rewrites_on``) and XLA sends convolutions to YNNPACK by default,
    the same fusions less convolutions (and less dots with ``dots_in_eigen``: see
    ``layers/dot_library.py``); otherwise nothing."""
    _, platform = current(platform)
    if not rewrites_on(platform) or not _is_default_ynn_list(",".join(_YNN_DEFAULT), platform):
        return {}
    kept = _YNN_DEFAULT[1:-1] if dots_in_eigen else _YNN_DEFAULT[:-1]
    return {_YNN_OPTION: ",".join(kept)}


def choose(x_shape, kernel_shape, stride, padding, dilation, groups, platform=None):
    """The lowering for this call: 'xla', 'im2col', 'einsum', 'taps' or 'xla_tapgrad'."""
    if not rewrites_on(platform):
        return "xla"
    kh, kw, cin_g, cout = kernel_shape
    cin = x_shape[-1]
    if (kh, kw) == (1, 1) and groups == 1:
        # XLA's 1x1 weight gradients go through large transpose copies; a dot does not
        return "einsum"
    if groups == cin and cin_g == 1:
        # XLA runs a depthwise convolution in its generic grouped loop, at every size measured
        return "taps"
    oh = out_size(x_shape[1], kh, stride[0], padding[0], dilation[0])
    ow = out_size(x_shape[2], kw, stride[1], padding[1], dilation[1])
    eigen = _eigen_convolutions(platform)
    if oh * ow <= IM2COL_ALWAYS_POSITIONS_PER_TAP * kh * kw or (
            oh * ow <= IM2COL_MAX_POSITIONS_PER_TAP * kh * kw
            and (cin >= IM2COL_MIN_CHANNELS or not eigen)):
        return "im2col"
    if groups == 1 and oh * ow >= TAPGRAD_MIN_POSITIONS and not eigen:
        # (AVX-only CPU) XLA's kernel gradient is 3-5x its forward and per-tap GEMMs cut it
        # on large maps (little from 14x14 down); forward and input gradient stay XLA's
        return "xla_tapgrad"
    return "xla"


def live_taps(size, k, stride, pad, dilation, out):
    """The kernel taps ``(lo, hi)`` along one axis that read some input element (not only
    padding) at some output position; ``(0, k)`` unless the dead ones are at the ends."""
    live = [i for i in range(k)
            if any(0 <= i * dilation + o * stride - pad < size for o in range(out))]
    if not live or live != list(range(live[0], live[-1] + 1)):
        return 0, k
    return live[0], live[-1] + 1


def dnnl_pieces(x_shape, kernel_shape, stride, padding, dilation, groups, dtype=jnp.float32,
                platform=None) -> tuple[str, ...]:
    """Which of a convolution's forward, input gradient and kernel gradient run in oneDNN
    (``layers/dnnl.py``) rather than in ``choose``'s lowering: float32 convolutions on the CPU
    where the rewrites are on, oneDNN is available and the process has one CPU device, by the
    per-piece measurements in docs/performance.md ("oneDNN's convolutions")."""
    mode, platform = current(platform)
    if (mode != "auto" or platform != "cpu" or jnp.dtype(dtype) != jnp.float32
            or not dnnl.available()):
        return ()
    if jax.device_count(platform) > 1:
        # XLA's partitioner would gather a sharded batch onto every device for a custom call
        return ()
    kh, kw, cin_g, cout = kernel_shape
    cin = x_shape[-1]
    if groups == cin and cin_g == 1:
        return DNNL_PIECES  # depthwise: 1.2-8x the taps' speed in each piece
    oh = out_size(x_shape[1], kh, stride[0], padding[0], dilation[0])
    ow = out_size(x_shape[2], kw, stride[1], padding[1], dilation[1])
    if groups != 1 or oh * ow <= IM2COL_ALWAYS_POSITIONS_PER_TAP * kh * kw:
        return ()
    if (kh, kw) == (1, 1):
        # ahead alone (the kernel gradient by 1.1-1.5x) but not within a resnet50 step
        return ()
    if cin < DNNL_STEM_CHANNELS and (stride[0] < kh or stride[1] < kw):
        # a stem: 2-2.6x XLA's in each piece at 224 px; not a ViT's patch embedding (stride =
        # kernel), whose forward XLA runs 1.5x faster
        return DNNL_PIECES
    return ("input",)  # 3x3s: the forward even, XLA's kernel gradient ahead


def conv2d(x, kernel, stride=1, padding=0, dilation=1, groups=1, impl=None):
    """NHWC x HWIO -> NHWC with torch's symmetric integer padding; ``impl`` None chooses, and
    then also hands ``dnnl_pieces`` to oneDNN."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if impl is None:
        impl = choose(x.shape, kernel.shape, stride, padding, dilation, groups)
        pieces = dnnl_pieces(x.shape, kernel.shape, stride, padding, dilation, groups,
                             jnp.result_type(x, kernel))
        if pieces:
            return _conv_dnnl((stride, padding, dilation, groups, impl, pieces), x, kernel)
    return _conv(x, kernel, stride, padding, dilation, groups, impl)


def _conv(x, kernel, stride, padding, dilation, groups, impl):
    kh, kw, cin_g, cout = kernel.shape
    if impl == "xla":
        return _lax_conv(x, kernel, stride, padding, dilation, groups)
    if impl == "xla_tapgrad":
        if groups != 1:
            raise ValueError("xla_tapgrad lowering: ungrouped convolutions only")
        return _conv_tapgrad(stride, padding, dilation, x, kernel)
    n, h, w, cin = x.shape
    oh = out_size(h, kh, stride[0], padding[0], dilation[0])
    ow = out_size(w, kw, stride[1], padding[1], dilation[1])
    if impl == "einsum":
        if (kh, kw) != (1, 1) or groups != 1:
            raise ValueError("einsum lowering: ungrouped 1x1 convolutions only")
        (view,) = tap_views(x, 1, 1, stride, padding, dilation, oh, ow)
        return dense(view, kernel[0, 0])
    (r0, r1) = live_taps(h, kh, stride[0], padding[0], dilation[0], oh)
    (c0, c1) = live_taps(w, kw, stride[1], padding[1], dilation[1], ow)
    if (r1 - r0, c1 - c0) != (kh, kw):
        # taps that read only padding add exact zeros (a 3x3 on a 1x1 map: 8 of its 9): skip them
        kernel, kh, kw = kernel[r0:r1, c0:c1], r1 - r0, c1 - c0
    if impl == "im2col":
        # (N, oh, ow, kh*kw, Cin): the (i, j, c) order of HWIO
        if oh * ow <= IM2COL_ALWAYS_POSITIONS_PER_TAP * kh * kw:
            patches = _patches((stride, padding, dilation, oh, ow, r0, r1, c0, c1), x)
        else:
            patches = jnp.stack(tap_views(x, kh, kw, stride, padding, dilation, oh, ow,
                                          range(r0, r1), range(c0, c1)), axis=3)
        if groups == 1:  # one GEMM: (N*oh*ow, kh*kw*Cin) @ (kh*kw*Cin, Cout)
            y = patches.reshape(n * oh * ow, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
            return y.reshape(n, oh, ow, cout)
        patches = patches.reshape(n, oh, ow, kh * kw, groups, cin_g)
        k = kernel.reshape(kh * kw, cin_g, groups, cout // groups)
        y = jnp.einsum("nhwkgc,kcgf->nhwgf", patches, k)
        return y.reshape(n, oh, ow, cout)
    if impl == "taps":
        if cin_g != 1 or groups != cin:
            raise ValueError("taps lowering: depthwise convolutions only (groups == channels)")
        return depthwise((stride, padding, dilation, oh, ow, r0, r1, c0, c1), x, kernel)
    raise ValueError(f"unknown convolution lowering {impl!r}; expected one of {IMPLS}")


# im2col's patches on the smallest maps (3x3: 2x2 and 1x1) as one gather rather than one
# strided slice per tap stacked: XLA:CPU emits each slice as its own loop fusion ahead of an
# unfused concatenate, and compiling those kernels is what made im2col graphs compile slowly.
# The gather runs as fast there but slower on 7x7 maps, where the slices stay. Its own
# transpose, a scatter-add, runs slower than the slices' pads and adds, which fuse into one
# loop: the gradient stays theirs.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _patches(spec, x):
    """(N, oh, ow, taps, C): the padded input under each live kernel tap, row-major."""
    ((sh, sw), (ph, pw), (dh, dw), oh, ow, r0, r1, c0, c1) = spec
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    n, hp, wp, c = x.shape
    rows = np.arange(oh)[:, None, None, None] * sh + np.arange(r0, r1)[None, None, :, None] * dh
    cols = np.arange(ow)[None, :, None, None] * sw + np.arange(c0, c1)[None, None, None, :] * dw
    flat = (rows * wp + cols).reshape(-1)  # (oh, ow, kh, kw) positions in the flattened map
    t = x.reshape(n, hp * wp, c).at[:, flat].get(mode="promise_in_bounds")
    return t.reshape(n, oh, ow, (r1 - r0) * (c1 - c0), c)


def _patches_fwd(spec, x):
    return _patches(spec, x), x


def _patches_bwd(spec, x, g):
    stride, padding, dilation, oh, ow, r0, r1, c0, c1 = spec
    _, vjp = jax.vjp(lambda x: jnp.stack(tap_views(
        x, r1 - r0, c1 - c0, stride, padding, dilation, oh, ow, range(r0, r1), range(c0, c1)),
        axis=3), x)
    return vjp(g)


_patches.defvjp(_patches_fwd, _patches_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv_dnnl(spec, x, kernel):
    """``impl``'s convolution with the pieces named in ``spec`` computed by oneDNN instead."""
    stride, padding, dilation, groups, impl, pieces = spec
    if "forward" not in pieces:
        return _conv(x, kernel, stride, padding, dilation, groups, impl)
    return dnnl.forward(dnnl.window(*spec[:4], x.shape, kernel.shape), x, kernel)


def _conv_dnnl_fwd(spec, x, kernel):
    return _conv_dnnl(spec, x, kernel), (x, kernel)


def _conv_dnnl_bwd(spec, res, g):
    stride, padding, dilation, groups, impl, pieces = spec
    x, kernel = res
    window = dnnl.window(*spec[:4], x.shape, kernel.shape)
    if "input" in pieces:
        dx = dnnl.input_grad(window, g, kernel)
    else:  # only the transpose of impl's convolution survives XLA's dead-code pass
        dx = jax.vjp(lambda x: _conv(x, kernel, *spec[:5]), x)[1](g)[0]
    if "kernel" in pieces:
        dk = dnnl.kernel_grad(window, x, g)
    else:
        dk = jax.vjp(lambda k: _conv(x, k, *spec[:5]), kernel)[1](g)[0]
    return dx, dk


_conv_dnnl.defvjp(_conv_dnnl_fwd, _conv_dnnl_bwd)


def _lax_conv(x, kernel, stride, padding, dilation, groups=1):
    return lax.conv_general_dilated(
        x, kernel, stride, [(p, p) for p in padding], rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _conv_tapgrad(stride, padding, dilation, x, kernel):
    """XLA's convolution and input gradient; the kernel gradient as per-tap GEMMs."""
    return _lax_conv(x, kernel, stride, padding, dilation)


def _tapgrad_fwd(stride, padding, dilation, x, kernel):
    return _lax_conv(x, kernel, stride, padding, dilation), (x, kernel)


def _tapgrad_bwd(stride, padding, dilation, res, g):
    x, kernel = res
    _, input_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, stride, padding, dilation), x)
    (dx,) = input_vjp(g)
    kh, kw, cin, cout = kernel.shape
    n, oh, ow, _ = g.shape
    views = tap_views(x, kh, kw, stride, padding, dilation, oh, ow)
    g2 = g.reshape(n * oh * ow, cout)
    if cin < 16:  # a stem: one (kh*kw*cin)-row GEMM beats kh*kw thin ones
        patches = jnp.stack(views, axis=3).reshape(n * oh * ow, kh * kw * cin)
        dk = lax.dot_general(patches, g2, (((0,), (0,)), ((), ())))
    else:
        dk = jnp.stack([lax.dot_general(v.reshape(n * oh * ow, cin), g2, (((0,), (0,)), ((), ())))
                        for v in views])
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_conv_tapgrad.defvjp(_tapgrad_fwd, _tapgrad_bwd)
