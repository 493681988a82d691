"""Finiteness guards: nothing non-finite is ever saved.

Both checks run on device.  ``nonfinite_flag`` is added to every step's metrics and summed with
them, so a NaN/Inf loss or gradient norm at any step is seen at the next log/save point without
a host sync per step; ``all_finite`` is one jitted reduction over the state, run before a save.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


class NonFiniteLoss(RuntimeError):
    pass


def _floating(tree):
    return [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]


@jax.jit
def nonfinite_flag(metrics) -> jax.Array:
    """1.0 when any floating metric of this step (loss, grad norm, ...) is NaN or Inf, else 0.0."""
    bad = [~jnp.all(jnp.isfinite(x)) for x in _floating(metrics)]
    return jnp.any(jnp.stack(bad)).astype(jnp.float32) if bad else jnp.float32(0)


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = _floating(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def all_finite(tree) -> bool:
    return bool(_all_finite(tree))


def count_nonfinite_leaves(tree) -> tuple[int, int]:
    """(non-finite leaves, floating leaves): for the error message only."""
    leaves = _floating(tree)
    bad = jax.device_get([~jnp.all(jnp.isfinite(x)) for x in leaves])
    return int(sum(bool(b) for b in bad)), len(leaves)
