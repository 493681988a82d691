"""torchvision's ``Matcher`` on padded ground truth, jittable.

Quality is (G, A) with G the padded number of ground-truth boxes; ``gt_valid`` (G,) marks the
real rows.  Padding rows can never be matched: they are excluded from every maximum.  Labels
are the index of the matched ground truth, -1 below ``low_threshold``, -2 between the
thresholds, as torchvision's ``BELOW_LOW_THRESHOLD`` / ``BETWEEN_THRESHOLDS``.
"""
from __future__ import annotations

import jax.numpy as jnp

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


class Matcher:
    def __init__(self, high_threshold: float, low_threshold: float,
                 allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"Matcher: low_threshold {low_threshold} must be <= high_threshold "
                             f"{high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality, gt_valid=None):
        """(G, A) quality -> (A,) int32 matches.  With no valid ground truth every anchor is
        BELOW_LOW_THRESHOLD (torchvision's detectors special-case that image the same way)."""
        g = quality.shape[0]
        valid = jnp.ones((g,), bool) if gt_valid is None else jnp.asarray(gt_valid, bool)
        q = jnp.where(valid[:, None], quality, -jnp.inf)
        all_matches = jnp.argmax(q, axis=0).astype(jnp.int32)
        vals = jnp.max(q, axis=0)
        matches = jnp.where(vals < self.low_threshold, BELOW_LOW_THRESHOLD,
                            jnp.where(vals < self.high_threshold, BETWEEN_THRESHOLDS,
                                      all_matches))
        if self.allow_low_quality_matches:
            best = jnp.max(q, axis=1, keepdims=True)  # each gt's best anchor quality, ties too
            ties = ((q == best) & valid[:, None]).any(axis=0)
            matches = jnp.where(ties, all_matches, matches)
        return jnp.where(valid.any(), matches, BELOW_LOW_THRESHOLD).astype(jnp.int32)


class SSDMatcher(Matcher):
    """One threshold, and every ground truth takes its best anchor (the last gt wins a shared
    anchor, as torchvision's index assignment does)."""

    def __init__(self, threshold: float):
        super().__init__(threshold, threshold, allow_low_quality_matches=False)

    def __call__(self, quality, gt_valid=None):
        g, a = quality.shape
        valid = jnp.ones((g,), bool) if gt_valid is None else jnp.asarray(gt_valid, bool)
        matches = super().__call__(quality, valid)
        q = jnp.where(valid[:, None], quality, -jnp.inf)
        best_anchor = jnp.argmax(q, axis=1)
        # torch's index assignment writes in gt order, so a later gt takes a shared anchor:
        # the largest gt index among those choosing an anchor is that writer
        target = jnp.where(valid, best_anchor, a)
        winner = jnp.full((a,), -1, jnp.int32).at[target].max(jnp.arange(g, dtype=jnp.int32),
                                                             mode="drop")
        return jnp.where(winner >= 0, winner, matches)
