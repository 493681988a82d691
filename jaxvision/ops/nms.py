"""Non-maximum suppression under jit: fixed-size inputs, padded outputs.

torchvision's kernel sorts by score (stable, descending) and walks the list, dropping every
later box whose IoU with a kept box is *greater than* the threshold.  Here the pairwise
"would suppress" matrix is computed once and the greedy walk is a ``fori_loop`` over the sorted
boxes carrying a suppressed flag per box, so any threshold works (the copied padded NMS that
hard-codes 0.5 in its self-suppression test does not).  The result is the kept indices into the
input in decreasing score order, padded with -1, and how many there are.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxvision.ops.boxes import box_iou


def _greedy(suppresses, alive):
    """``suppresses[i, j]``: box i (sorted) would drop box j; returns which sorted boxes stay."""
    n = suppresses.shape[0]
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    suppresses = suppresses & later

    def body(i, dropped):
        keep_i = alive[i] & ~dropped[i]
        return dropped | (suppresses[i] & keep_i)

    dropped = jax.lax.fori_loop(0, n, body, jnp.zeros((n,), bool))
    return alive & ~dropped


def _pack(kept, order, max_output_size: int):
    """Sorted-position keep flags -> (indices into the input, padded with -1; count)."""
    slot = jnp.cumsum(kept) - 1
    slot = jnp.where(kept & (slot < max_output_size), slot, max_output_size)
    out = jnp.full((max_output_size,), -1, jnp.int32).at[slot].set(order.astype(jnp.int32),
                                                                  mode="drop")
    return out, jnp.minimum(kept.sum(), max_output_size).astype(jnp.int32)


def _check(boxes, scores, idxs=None):
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms: boxes must be (N, 4) xyxy, got shape {boxes.shape}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: scores must be (N,) = ({boxes.shape[0]},), got {scores.shape}")
    if idxs is not None and idxs.shape != boxes.shape[:1]:
        raise ValueError(f"batched_nms: idxs must be (N,) = ({boxes.shape[0]},), got {idxs.shape}")


def batched_nms(boxes, scores, idxs, iou_threshold: float, max_output_size: Optional[int] = None,
                valid=None):
    """Class-wise NMS: boxes of different ``idxs`` never suppress each other.

    ``valid`` (N,) bool marks padding rows (False) that are neither kept nor suppress anything.
    Returns ``(indices, count)``: ``indices`` (max_output_size,) int32 into the input, sorted by
    decreasing score (ties keep input order), -1 past ``count``.
    """
    boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
    _check(boxes, scores, None if idxs is None else jnp.asarray(idxs))
    n = boxes.shape[0]
    max_output_size = n if max_output_size is None else int(max_output_size)
    alive = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    # padding sorts last whatever its score
    key = jnp.where(alive, -scores, jnp.inf)
    order = jnp.argsort(key, stable=True)
    b = boxes[order]
    suppresses = box_iou(b, b) > iou_threshold
    if idxs is not None:
        c = jnp.asarray(idxs)[order]
        suppresses = suppresses & (c[:, None] == c[None, :])
    kept = _greedy(suppresses, alive[order])
    return _pack(kept, order, max_output_size)


def nms(boxes, scores, iou_threshold: float, max_output_size: Optional[int] = None, valid=None):
    """``torchvision.ops.nms`` with static shapes; see :func:`batched_nms` for the outputs."""
    return batched_nms(boxes, scores, None, iou_threshold, max_output_size, valid)
