"""Random bits on the CPU by jax's threefry hash as one custom call per draw.

jax lowers threefry's 20 rounds as a 5-trip ``while`` loop on the CPU and as straight-line code
everywhere else (the loop keeps a draw that XLA fuses into other code small; below). XLA:CPU
(jaxlib 0.10.2) compiles each loop as several small kernels plus copies of its carried state,
and an initialisation draws once per parameter: a deep model's init program took longer to
compile than its train step. Two replacements, both bitwise jax's hash (the same rounds on the
same words):

* ``threefry_cpu.cc``, an XLA:CPU custom call (compiled with the system's compiler on first
  use, ``layers/native.py``): nothing for XLA to compile per draw, nothing to fuse. resnet50's
  init at 224 px compiled in 13.4 s with jax's loops, 11.5 s unrolled, 4.8 s with the call;
  docs/performance.md, "The random bits as a custom call".
* jax's own unrolled lowering, where the call cannot be built (no compiler, a failed compile,
  ``JAXVISION_CPU_THREEFRY=0``), for initialisations only: there each parameter's bits feed
  that parameter alone, where in a train step XLA fuses a draw into its consumers and an
  unrolled hash inside those fusions can stall LLVM (Swin's stochastic depth, a per-sample draw
  fused into the residual's elementwise ops, was still compiling after 12 minutes).

``call`` passes the rule for one lowering only (jax's ``LoweringParameters``), so nothing changes
for any other program of the process; ``install()`` makes the custom call the CPU lowering of
every program, for a process that asks (jaxvision's commands do). jax's module paths used here
are private: if they move, programs are compiled as jax would.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from jaxvision.layers import native

ENV = "JAXVISION_CPU_THREEFRY"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "threefry_cpu.cc")
_TARGET = "jaxvision_threefry2x32"

try:
    from jax._src.interpreters import mlir as _mlir
    from jax._src.random import threefry2x32 as _threefry

    _PRIMITIVE = _threefry.threefry2x32_p
    # jax's lowering of threefry for every platform but the CPU
    _UNROLLED = _mlir.LoweringParameters(override_lowering_rules=(
        (_PRIMITIVE, _threefry._threefry2x32_lowering_rule),))
except (ImportError, AttributeError, TypeError):  # another jax: its own lowering
    _UNROLLED = None


def _hash(k1, k2, x1, x2):
    """threefry2x32 by the custom call: the counters broadcast to the result's shape, the keys
    too unless they are one pair."""
    shape = jnp.broadcast_shapes(k1.shape, k2.shape, x1.shape, x2.shape)
    if k1.size != 1 or k2.size != 1:
        k1, k2 = jnp.broadcast_to(k1, shape), jnp.broadcast_to(k2, shape)
    out = jax.ShapeDtypeStruct(shape, jnp.uint32)
    return jax.ffi.ffi_call(_TARGET, (out, out))(
        k1, k2, jnp.broadcast_to(x1, shape), jnp.broadcast_to(x2, shape))


@functools.lru_cache(maxsize=None)
def _native():
    """(lowering parameters with the custom call, None) once it is registered with XLA, else
    (None, the reason why not)."""
    if _UNROLLED is None:
        return None, "this jax has not the private lowering paths used here"
    reason = native.load(lambda: native.build("threefry", SOURCE, flags=["-O3"]),
                         {_TARGET: "JaxvisionThreefry2x32"}, ENV,
                         "the custom call is built on Linux only",
                         "initialisations compile jax's unrolled threefry",
                         native.failed_to_compile)
    if reason is not None:
        return None, reason
    rule = _mlir.lower_fun(_hash, multiple_results=True)
    return _mlir.LoweringParameters(override_lowering_rules=((_PRIMITIVE, rule),)), None


def why_not() -> str | None:
    """None if initialisations hash by the custom call in this process, else the reason."""
    return _native()[1]


def parameters():
    """The lowering parameters an initialisation is compiled with: the custom call, else jax's
    unrolled hash, else None (jax's own lowering)."""
    return _native()[0] or _UNROLLED


def install() -> bool:
    """Make the custom call jax's CPU lowering of threefry for every program this process
    compiles from now on, dropout's and any other draw's included; whether it could. A
    process-wide choice, made by jaxvision's commands (``train``, ``eval``, ``predict``,
    ``extract``), which own their process, and by the test session (``tests/conftest.py``); a
    user's own script may call it too. The library's functions only pass the call to the
    initialisations they compile."""
    parameters = _native()[0]
    if parameters is None:
        return False
    (primitive, rule), = parameters.override_lowering_rules
    _mlir.register_lowering(primitive, rule, platform="cpu")
    return True


def call(jitted, *args):
    """``jitted(*args)`` (a ``jax.jit`` function, or anything with its ``trace``), compiled
    with threefry as above when it runs on the CPU; as jax would compile it otherwise, and
    when called inside another trace."""
    if (_UNROLLED is None or jax.default_backend() != "cpu"
            or any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args))):
        return jitted(*args)
    try:
        lowered = jitted.trace(*args).lower(_private_parameters=parameters())
    except TypeError:  # a jax whose lower() takes no such parameters
        return jitted(*args)
    return lowered.compile()(*args)
