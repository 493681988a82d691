"""Which library runs a jitted program's dots on the CPU: YNNPACK or Eigen, chosen per program.

XLA:CPU (jaxlib 0.10.2) sends dots to YNNPACK or to Eigen by one option of the whole compiled
program (``xla_cpu_experimental_ynn_fusion_type``), and neither library is ahead everywhere. On
the AVX-512 CPU of docs/performance.md ("Dots: YNNPACK or Eigen, per program"), Eigen ran
vit_b_16's train step 10% and its inference 12% faster, while YNNPACK ran resnet18's at 32 px
5% faster, and resnet50 / mobilenet_v2 were within 1-5% either way. What sets ViT apart is the
shape of its products: large GEMMs (at least ``BIG_ROWS`` rows, inner and output widths of at
least ``BIG_WIDTH``) are 83-96% of its dot FLOPs, against 0-10% for every convnet measured (their
1x1 and im2col products are narrow or have few rows). ``DotChoice`` traces a program once, at
its first call, counts that share in the traced jaxpr and compiles the program with its dots in
Eigen from ``BIG_SHARE`` up. The program's trace is reused where YNNPACK stays; where Eigen is
chosen the program is traced a second time (jax caches traces per compiler options).
"""
from __future__ import annotations

import math

from jax.extend import core as jcore

BIG_ROWS = 1024
BIG_WIDTH = 512
BIG_SHARE = 0.5


def _dot_flops(eqn):
    """(FLOPs, whether it is a large GEMM) of one ``dot_general``."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    k = math.prod(ls[i] for i in lc)
    batch = math.prod(ls[i] for i in lb)
    m = math.prod(d for i, d in enumerate(ls) if i not in lc and i not in lb)
    n = math.prod(d for i, d in enumerate(rs) if i not in rc and i not in rb)
    return 2 * batch * m * n * k, batch * m >= BIG_ROWS and min(n, k) >= BIG_WIDTH


def _walk(jaxpr, times, totals):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            flops, big = _dot_flops(eqn)
            totals[big] += flops * times
        inner = times * eqn.params.get("length", 1)  # a scan's body runs `length` times
        for sub in jcore.jaxprs_in_params(eqn.params):
            _walk(sub, inner, totals)


def big_gemm_share(jaxpr) -> float:
    """The share of a (closed) jaxpr's dot FLOPs in large GEMMs; 0.0 without dots."""
    totals = {False: 0, True: 0}
    _walk(getattr(jaxpr, "jaxpr", jaxpr), 1, totals)
    total = totals[False] + totals[True]
    return totals[True] / total if total else 0.0


class DotChoice:
    """A jitted function (``default``: dots in YNNPACK) that switches to ``make_eigen()`` (the
    same function jitted with its dots in Eigen) when the program traced at its first call,
    ``lower`` or ``trace`` is mostly large GEMMs. The choice is made once, from those first
    arguments' shapes; anything else is ``jax.jit``'s, of the chosen function."""

    def __init__(self, default, make_eigen):
        self._default, self._make_eigen, self._chosen = default, make_eigen, None
        self.__wrapped__ = default
        self.__doc__ = getattr(default, "__doc__", None)

    def _pick(self, args, kwargs):
        if self._chosen is None:
            share = big_gemm_share(self._default.trace(*args, **kwargs).jaxpr)
            self._chosen = self._make_eigen() if share >= BIG_SHARE else self._default
        return self._chosen

    @property
    def dots_in_eigen(self):
        """None before the first call, then whether this program's dots run in Eigen."""
        return None if self._chosen is None else self._chosen is not self._default

    def __call__(self, *args, **kwargs):
        return self._pick(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._pick(args, kwargs).lower(*args, **kwargs)

    def trace(self, *args, **kwargs):
        return self._pick(args, kwargs).trace(*args, **kwargs)

    def __getattr__(self, name):  # eval_shape, clear_cache, _cache_size...
        return getattr(self._chosen or self._default, name)
