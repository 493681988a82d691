"""torch's activations that jax.nn spells otherwise (or not at all), each in torch's order of
operations so that outputs match to the last bit where torch's do."""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn


def relu6(x):
    return jnp.minimum(jnp.maximum(x, 0), 6)


def hardsigmoid(x):
    return relu6(x + 3) / 6  # torch.nn.functional.hardsigmoid


def hardswish(x):
    return x * relu6(x + 3) / 6  # torch's formula and order of operations


def leaky(x):
    """darknet's (and YOLO's) leaky ReLU, slope 0.1."""
    return nn.leaky_relu(x, 0.1)
