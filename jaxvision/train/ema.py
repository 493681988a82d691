"""Exponential moving averages of the weights and BatchNorm statistics.

Two rules. The plain one averages after every step from the initial weights. torchvision's
reference (``references/classification``: ``utils.ExponentialMovingAverage``, an
``AveragedModel`` with ``use_buffers=True``, and its train loop) differs in four ways, all kept
by ``reference=True``: the decay is adjusted to the run, ``alpha = min(1, (1 - decay) *
global_batch * every / epochs)``; it updates after batch ``i`` of each epoch when
``i % every == 0``; its first update copies the weights; and every update during the learning
rate's warm-up epochs resets its count, so the next update copies again.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class EmaRule:
    decay: float
    every: int = 1
    steps_per_epoch: int = 1
    warmup_epochs: float = 0.0
    reference: bool = False

    @classmethod
    def from_config(cls, train, global_batch: int, steps_per_epoch: int, warmup_epochs: float):
        """The rule of ``train.ema_decay`` / ``ema_steps`` / ``ema_reference``."""
        decay, every = float(train.ema_decay), int(train.get("ema_steps", 1))
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1], got {decay}")
        if every < 1:
            raise ValueError(f"train.ema_steps must be >= 1, got {every}")
        reference = bool(train.get("ema_reference", False))
        if reference:
            epochs = max(int(train.epochs), 1)
            decay = 1.0 - min(1.0, (1.0 - decay) * global_batch * every / epochs)
        return cls(decay, every, max(int(steps_per_epoch), 1),
                   float(warmup_epochs) if reference else 0.0, reference)

    def weights(self, step):
        """(w_ema, w_new) for the step of 0-based index ``step`` (traced): (1, 0) keeps the
        average, (0, 1) copies, (decay, 1 - decay) averages. The weights are formed in float64
        on the host, as torch's ``decay * avg + (1 - decay) * param`` takes python floats."""
        keep = (jnp.float32(1.0), jnp.float32(0.0))
        avg = (jnp.float32(self.decay), jnp.float32(1.0 - self.decay))
        copy = (jnp.float32(0.0), jnp.float32(1.0))
        i, epoch = step % self.steps_per_epoch, step // self.steps_per_epoch
        update = i % self.every == 0
        if not self.reference:
            return tuple(jnp.where(update, a, k) for a, k in zip(avg, keep))
        # the update before this one: earlier in this epoch, or (at batch 0) in the last one
        prev_epoch = jnp.where(i >= self.every, epoch, epoch - 1)
        fresh = (step == 0) | (prev_epoch < self.warmup_epochs)
        return tuple(jnp.where(update, jnp.where(fresh, c, a), k)
                     for c, a, k in zip(copy, avg, keep))

    def update(self, step, ema, new):
        w_ema, w_new = self.weights(step)
        return jax.tree.map(lambda e, p: w_ema * e + w_new * p, ema, new)
