"""The one place images are normalised: on the device, inside the jitted steps (a layer, not a
part of ``data``: the steps and the tasks below them import it, and ``jaxvision bench`` must
import no data stack).

Loaders ship images as uint8 HWC, a quarter of float32's host->device bytes; torchvision's
``ToTensor`` + ``Normalize``, ``(x / 255 - mean) / std`` in float32, runs here (the model then
casts to its own dtype, as it always did).
"""
from __future__ import annotations

import jax.numpy as jnp


def normalize(images, mean, std):
    """uint8 ``[..., H, W, 3]`` -> float32 ``(x / 255 - mean) / std``; jnp, so it runs inside a
    jitted step or eagerly on host arrays."""
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def normalize_batch(batch: dict, norm) -> dict:
    """``batch`` with its uint8 ``image`` normalised with ``norm = (mean, std)``.

    A detection batch (it carries ``image_size``) holds each image in the top-left ``(h, w)`` of
    a zero-filled canvas; torchvision pads after normalising, so what lies outside is 0 after
    normalising too. A float ``image`` is one the caller normalised already (benchmarks, tests
    that build arrays) and passes unchanged.
    """
    image = batch["image"]
    if image.dtype != jnp.uint8:
        return batch
    if norm is None:
        raise ValueError("the batch's images are uint8 and the step has no mean/std to "
                         "normalise them: pass norm=(data.mean, data.std)")
    x = normalize(image, *norm)
    if "image_size" in batch:
        size = jnp.asarray(batch["image_size"])
        rows = jnp.arange(x.shape[-3])[None, :, None] < size[:, 0, None, None]
        cols = jnp.arange(x.shape[-2])[None, None, :] < size[:, 1, None, None]
        x = jnp.where((rows & cols)[..., None], x, 0.0)
    return {**batch, "image": x}
