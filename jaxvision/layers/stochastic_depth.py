"""torchvision's ``ops.StochasticDepth`` (mode "row"): drop whole residual branches per sample."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn


class StochasticDepth(nn.Module):
    """Zero the input for a random subset of the batch (probability ``p``) and rescale the rest
    by ``1 / (1 - p)``, in training only; the mask is drawn from the ``'dropout'`` rng.

    One instance may be called several times (Swin, MaxViT reuse theirs for both residual
    branches): every call draws a fresh mask, as torch's module does.
    """

    p: float

    @nn.compact
    def __call__(self, x, train: bool = False):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"drop probability has to be between 0 and 1, but got {self.p}")
        if not train or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        noise = jax.random.bernoulli(self.make_rng("dropout"), survival, shape).astype(x.dtype)
        if survival > 0.0:  # torch divides the mask first, then multiplies
            noise = noise / jnp.asarray(survival, x.dtype)
        return x * noise
