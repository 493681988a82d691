"""jaxvision models in Flax NNX code, through Flax's own bridge (``flax.nnx.bridge.ToNNX``).

A jaxvision model stays a Linen module (its parity with torchvision and its converter are
Linen's); :func:`to_nnx` wraps it into a stateful NNX module whose state holds the model's
variables under their Linen paths (``conv1/kernel`` as an ``nnx.Param``, ``bn1/mean`` as an
``nnx.BatchStat``).  Two things the bare bridge leaves to the caller are done here:

* ``train=True`` makes the call update BatchNorm statistics (Linen's ``mutable=["batch_stats"]``),
  so an ``nnx.value_and_grad`` step trains exactly as the Linen step does;
* pretrained ``variables`` (``create_model(..., pretrained=PATH)``) replace the initial ones.

Dropout and stochastic depth draw from the ``dropout`` stream of the ``nnx.Rngs`` given at
construction (a new key each call), or of ``rngs=`` given to a call.  Needs Flax's
``nnx.bridge`` (flax >= 0.10); imported on demand, never by ``import jaxvision``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
from flax import nnx
from flax.nnx.bridge import variables as bridge_variables


class LinenModel(nnx.bridge.ToNNX):
    """``nnx.bridge.ToNNX`` whose training calls update BatchNorm statistics."""

    def __call__(self, *args, train: bool = False, mutable: Any = None, **kwargs):
        if train and mutable is None:
            mutable = ["batch_stats"]
        return super().__call__(*args, train=train, mutable=mutable, **kwargs)


def to_nnx(model: nn.Module, sample, *, rngs: nnx.Rngs,
           variables: Optional[Mapping] = None) -> LinenModel:
    """``model`` (e.g. ``jv.create_model(...)``) as an NNX module, initialised on ``sample`` (an
    input batch; its shape only) in eval mode, then given ``variables`` where passed: those must
    be the model's own tree (same paths and shapes), e.g. from ``pretrained=``."""
    out = LinenModel(model, rngs=rngs).lazy_init(sample, train=False)
    if variables is not None:
        fresh = nnx.state(out, nnx.Not(nnx.RngState))
        given = nnx.State(bridge_variables.linen_vars_to_nnx_attrs(dict(variables)))
        shapes = lambda s: {k: (type(v).__name__, getattr(v, "shape", None))
                             for k, v in nnx.to_flat_state(s)}
        if shapes(fresh) != shapes(given):
            diff = sorted(set(shapes(fresh).items()) ^ set(shapes(given).items()), key=str)
            raise ValueError(f"variables do not fit {type(model).__name__}: (path, (kind, shape)) "
                             f"differing: {diff[:5]}{' ...' if len(diff) > 5 else ''}")
        nnx.update(out, given)
    return out


def linen_variables(model: nnx.Module) -> dict:
    """The Linen variables (``{"params": ..., "batch_stats": ...}``) of a :func:`to_nnx` model:
    what ``model.to_nnx__module.apply`` takes, or what a checkpoint of the Linen model holds."""
    return bridge_variables.nnx_attrs_to_linen_vars(dict(nnx.state(model, nnx.Not(nnx.RngState))))
