"""torchvision's ``BalancedPositiveNegativeSampler`` with static shapes, drawn from a JAX key
(the RPN's 256 anchors at most half positive, the RoI heads' 512 proposals a quarter)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_labels(rng, labels, batch_size_per_image: int = 256,
                  positive_fraction: float = 0.5):
    """Per image of ``labels`` (N, A) (>= 1 positive, 0 negative, -1 ignored):
    min(batch * fraction, #positives) positives and min(batch - that, #negatives) negatives,
    uniformly without replacement.  Returns (positive, negative) masks like ``labels``."""
    def one(key, lab):
        pos, neg = lab >= 1, lab == 0
        num_pos = jnp.minimum(int(batch_size_per_image * positive_fraction), pos.sum())
        num_neg = jnp.minimum(batch_size_per_image - num_pos, neg.sum())
        order = jax.random.uniform(key, lab.shape)

        def pick(mask, k):  # the k members of mask with the smallest draws
            rank = jnp.argsort(jnp.argsort(jnp.where(mask, order, 2.0)))
            return mask & (rank < k)

        return pick(pos, num_pos), pick(neg, num_neg)

    return jax.vmap(one)(jax.random.split(rng, labels.shape[0]), labels)
