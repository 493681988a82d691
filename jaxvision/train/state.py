"""The train state: everything a step reads, and everything it changes."""
from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # None when EMA is off
    ema_batch_stats: Any
    rng: jax.Array  # raw uint32 key data, so checkpoints hold plain arrays

    @classmethod
    def create(cls, variables, tx, seed: int, ema: bool):
        params = variables["params"]
        stats = variables.get("batch_stats", {})
        copy = lambda t: jax.tree.map(jnp.array, t)
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                   opt_state=tx.init(params), ema_params=copy(params) if ema else None,
                   ema_batch_stats=copy(stats) if ema else None,
                   rng=jax.random.key_data(jax.random.key(seed)))

    def live_variables(self) -> dict:
        """The weights the optimizer updates (torchvision's reference evaluates these too)."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    def eval_variables(self) -> dict:
        """EMA weights when kept, else the live ones (:func:`eval_weights`)."""
        return eval_weights(vars(self))


def eval_weights(state: Mapping, ema: bool = True) -> dict:
    """The variables to evaluate from a train state's fields (a ``TrainState``'s, or a restored
    checkpoint's dict): the EMA weights when ``ema`` and kept (what torchvision's --model-ema
    evaluates), else the live ones."""
    if ema and state.get("ema_params") is not None:
        return {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]}
    return {"params": state["params"], "batch_stats": state["batch_stats"]}
