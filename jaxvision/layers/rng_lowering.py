"""A model's initialisation compiled with jax's random-bit hash unrolled on the CPU.

jax lowers threefry's 20 rounds as a 5-trip ``while`` loop on the CPU and as straight-line code
everywhere else (the loop keeps a draw that XLA fuses into other code small; below). XLA:CPU
(jaxlib 0.10.2) compiles each loop as several small kernels plus copies of its carried state,
and an initialisation draws once per parameter: resnet18's compiled 2-4x faster unrolled and
ran 2-3x faster, with bitwise the same parameters (the same hash, its rounds in the same
order); docs/performance.md, "The initialisation's random bits".

Only initialisations get it. There each parameter's bits feed that parameter alone; in a
train step XLA fuses a draw into its consumers, and an unrolled hash inside those fusions can
stall LLVM: Swin's stochastic depth (a per-sample draw fused into the residual's elementwise
ops) was still compiling after 12 minutes unrolled, against seconds with the loops.

The rule is passed for one lowering only (jax's ``LoweringParameters``), so nothing changes for
any other program of the process. jax's module paths used here are private: if they move, the
program is compiled as jax would.
"""
from __future__ import annotations

import jax

try:
    from jax._src.interpreters import mlir as _mlir
    from jax._src.random import threefry2x32 as _threefry

    # jax's lowering of threefry for every platform but the CPU
    _PARAMETERS = _mlir.LoweringParameters(override_lowering_rules=(
        (_threefry.threefry2x32_p, _threefry._threefry2x32_lowering_rule),))
except (ImportError, AttributeError, TypeError):  # another jax: its own lowering
    _PARAMETERS = None


def call(jitted, *args):
    """``jitted(*args)`` (a ``jax.jit`` function, or anything with its ``trace``), compiled
    with threefry unrolled when it runs on the CPU; as jax would compile it otherwise, and
    when called inside another trace."""
    if (_PARAMETERS is None or jax.default_backend() != "cpu"
            or any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args))):
        return jitted(*args)
    try:
        lowered = jitted.trace(*args).lower(_private_parameters=_PARAMETERS)
    except TypeError:  # a jax whose lower() takes no such parameters
        return jitted(*args)
    return lowered.compile()(*args)
