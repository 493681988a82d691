"""What torchvision's classification recipe does to a batch after normalising, jittable: the
RandomErasing boxes the workers drew, then MixUp or CutMix (``torchvision.transforms.v2``'s,
the reference's ``--mixup-alpha`` / ``--cutmix-alpha``).

One lambda per batch from Beta(alpha, alpha); each example pairs with the batch rolled by one;
CutMix's lambda is corrected by its box's clipped area; with both set, one of the two is chosen
per batch (the reference's ``RandomChoice``). The batch is the global one, so the pairing rolls
across devices, where torchvision's rolls within each process's batch.
"""
from __future__ import annotations

import math

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


def mixup(images, targets, lam):
    """``lam * x + (1 - lam) * roll(x, 1)``, for images and (one-hot or soft) targets alike."""
    mix = lambda a: jnp.roll(a, 1, axis=0) * (1.0 - lam) + a * lam
    return mix(images), mix(targets)


def cutmix_box(key, lam, height: int, width: int):
    """torchvision's CutMix box (x1, y1, x2, y2) around a centre uniform over the pixels."""
    kx, ky = jax.random.split(key)
    return box_at(jax.random.randint(kx, (), 0, width), jax.random.randint(ky, (), 0, height),
                  lam, height, width)


def box_at(cx, cy, lam, height: int, width: int):
    """The box of centre (cx, cy): half-sides ``int(0.5 * sqrt(1 - lam) * side)``, clipped."""
    r = 0.5 * jnp.sqrt(1.0 - lam)
    rw, rh = (r * width).astype(jnp.int32), (r * height).astype(jnp.int32)
    return (jnp.maximum(cx - rw, 0), jnp.maximum(cy - rh, 0),
            jnp.minimum(cx + rw, width), jnp.minimum(cy + rh, height))


def cutmix(images, targets, box):
    """The box of each image replaced by the same box of the batch rolled by one; the targets
    mixed by the area actually kept: ``lam = 1 - box area / image area``."""
    x1, y1, x2, y2 = box
    height, width = images.shape[1], images.shape[2]
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    out = jnp.where(inside[None, :, :, None], jnp.roll(images, 1, axis=0), images)
    lam = 1.0 - jnp.asarray((x2 - x1) * (y2 - y1), jnp.float32) / (width * height)
    return out, mixup(targets, targets, lam)[1]


def mix_batch(key, images, targets, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              prob: float = 1.0):
    """MixUp (alpha > 0) or CutMix (alpha > 0), one chosen per batch when both are set, applied
    with probability ``prob`` (torchvision's references' ``p``, 1 in its recipes)."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    k_apply, k_choice, k_mix, k_cut, k_box = jax.random.split(key, 5)
    outs = []
    if mixup_alpha > 0:
        outs.append(mixup(images, targets, jax.random.beta(k_mix, mixup_alpha, mixup_alpha)))
    if cutmix_alpha > 0:
        lam = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha)
        outs.append(cutmix(images, targets, cutmix_box(k_box, lam, *images.shape[1:3])))
    x, y = outs[0]
    if len(outs) == 2:
        pick = jax.random.bernoulli(k_choice)
        x, y = jnp.where(pick, outs[1][0], x), jnp.where(pick, outs[1][1], y)
    if prob < 1:
        keep = jax.random.uniform(k_apply) >= prob
        x, y = jnp.where(keep, images, x), jnp.where(keep, targets, y)
    return x, y


def check_alpha(name: str, alpha: float):
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"{name} must be a finite number >= 0 (0: off), got {alpha}")
