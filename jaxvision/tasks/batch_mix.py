"""What torchvision's classification recipe does to a batch after normalising, jittable: the
RandomErasing boxes the workers drew."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def erase(images, boxes, noise_key=None):
    """torchvision's ``F.erase`` per example: ``images[n, top:top+h, left:left+w] = v`` with
    ``boxes[n] = (top, left, h, w)`` (h = w = 0: untouched); v is 0 or, with ``noise_key``,
    standard normal noise (RandomErasing's ``value="random"``) in normalised units."""
    boxes = jnp.asarray(boxes)
    top, left, h, w = (boxes[:, k, None, None] for k in range(4))
    rows = jnp.arange(images.shape[1])[None, :, None]
    cols = jnp.arange(images.shape[2])[None, None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    value = (jnp.zeros((), images.dtype) if noise_key is None
             else jax.random.normal(noise_key, images.shape, images.dtype))
    return jnp.where(inside[..., None], value, images)
