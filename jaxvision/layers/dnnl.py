"""oneDNN's convolution kernels as XLA custom calls on the CPU.

XLA:CPU (jaxlib 0.10.2) runs a convolution in Eigen's generic spatial convolution or in YNNPACK,
and neither has oneDNN's direct NHWC kernels, which torch uses. Where ``lowering.dnnl_pieces``
finds oneDNN faster (depthwise convolutions, stems, some gradients), a convolution's forward,
input gradient or kernel gradient is a ``jax.ffi`` call into ``dnnl_conv.cc`` instead.

That file is compiled on first use (a few seconds, once per machine) against the oneDNN the
``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp`` wheels install, and kept in
``$XDG_CACHE_HOME/jaxvision/dnnl`` (``~/.cache``). Without those wheels, a C++ compiler, or with
``JAXVISION_DNNL=0``, ``available()`` is False and every convolution stays XLA's.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os

import jax
import numpy as np

from jaxvision.layers import native

ENV = "JAXVISION_DNNL"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dnnl_conv.cc")
TARGETS = {"forward": "JaxvisionDnnlConvForward", "input": "JaxvisionDnnlConvBackwardData",
           "kernel": "JaxvisionDnnlConvBackwardWeights"}


def _wheel_file(dist: str, suffix: str) -> str | None:
    """The path of the file of installed distribution ``dist`` whose name ends in ``suffix``."""
    try:
        files = importlib.metadata.distribution(dist).files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            path = os.path.abspath(str(f.locate()))
            if os.path.exists(path):
                return path
    return None


def _onednn() -> tuple[str, str]:
    """(include directory, library directory) of the installed oneDNN; OSError if missing."""
    header = _wheel_file("onednn-devel-cpu-gomp", "/oneapi/dnnl/dnnl.hpp")
    library = _wheel_file("onednn-cpu-gomp", "/libdnnl.so.3")
    if header is None or library is None:
        raise OSError("oneDNN is not installed (pip install onednn-cpu-gomp "
                      "onednn-devel-cpu-gomp)")
    return os.path.dirname(os.path.dirname(os.path.dirname(header))), os.path.dirname(library)


def _build() -> str:
    """The compiled handlers' path (compiled on first use). OSError (with the reason) if oneDNN
    is missing or they cannot be built."""
    include, libdir = _onednn()
    return native.build("dnnl", SOURCE, flags=["-O2", "-I", include],
                        libs=["-L", libdir, "-l:libdnnl.so.3", "-lgomp", f"-Wl,-rpath,{libdir}"])


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Registers the handlers with XLA once per process; the reason why not, or None."""
    return native.load(_build, {_target(p): symbol for p, symbol in TARGETS.items()}, ENV,
                       "oneDNN's custom calls are built on Linux only",
                       "oneDNN's convolutions are off, XLA's run instead",
                       lambda e: not str(e).startswith("oneDNN is not installed"))


def why_not() -> str | None:
    """None if oneDNN's convolutions can be called in this process, else the reason why not."""
    return _load()


def available() -> bool:
    return _load() is None


def _target(piece: str) -> str:
    return f"jaxvision_dnnl_conv_{piece}"


def _call(piece, out_shape, a, b, spec):
    stride, padding, dilation, groups = spec[:4]
    if _load() is not None:
        raise RuntimeError(f"oneDNN's convolutions are not available: {why_not()}")
    attrs = dict(sh=stride[0], sw=stride[1], pt=padding[0], pb=padding[0], pl=padding[1],
                 pr=padding[1], dh=dilation[0], dw=dilation[1], groups=groups)
    return jax.ffi.ffi_call(_target(piece), jax.ShapeDtypeStruct(out_shape, a.dtype),
                            vmap_method="sequential")(
        a, b, **{k: np.int64(v) for k, v in attrs.items()})


def window(stride, padding, dilation, groups, x_shape, kernel_shape):
    """The ``spec`` of the three functions below: pairs for the spatial ones, torch's
    symmetric padding, and the input's and kernel's shapes."""
    return (tuple(stride), tuple(padding), tuple(dilation), groups, tuple(x_shape),
            tuple(kernel_shape))


def out_shape(spec):
    (sh, sw), (ph, pw), (dh, dw), _, (n, h, w, _), (kh, kw, _, cout) = spec
    return (n, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
            (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1, cout)


# The three are each other's transposes, so their gradients are calls of the three again, to
# any order: <forward(x, k), c> = <x, input_grad(c, k)> = <k, kernel_grad(x, c)>.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def forward(spec, x, kernel):
    """NHWC x HWIO -> NHWC."""
    return _call("forward", out_shape(spec), x, kernel, spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def input_grad(spec, dy, kernel):
    """The gradient of ``forward``'s input, given its output's ``dy``."""
    return _call("input", spec[4], dy, kernel, spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def kernel_grad(spec, x, dy):
    """The gradient of ``forward``'s kernel, given its input and its output's ``dy``."""
    return _call("kernel", spec[5], x, dy, spec)


def _forward_bwd(spec, res, c):
    x, kernel = res
    return input_grad(spec, c, kernel), kernel_grad(spec, x, c)


def _input_grad_bwd(spec, res, c):
    dy, kernel = res
    return forward(spec, c, kernel), kernel_grad(spec, c, dy)


def _kernel_grad_bwd(spec, res, c):
    x, dy = res
    return input_grad(spec, dy, c), forward(spec, x, c)


forward.defvjp(lambda spec, x, k: (forward(spec, x, k), (x, k)), _forward_bwd)
input_grad.defvjp(lambda spec, dy, k: (input_grad(spec, dy, k), (dy, k)), _input_grad_bwd)
kernel_grad.defvjp(lambda spec, x, dy: (kernel_grad(spec, x, dy), (x, dy)), _kernel_grad_bwd)
