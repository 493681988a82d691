"""Random variables drawn from a model's shapes, for tests that run a model without paying
for its init's compile."""
import jax
import numpy as np


def random_variables(model, x, seed=0):
    """Random weights drawn from the shapes (no eager init): torchvision zero-initialises
    ViT's head and several biases, and a comparison of zeros proves nothing; BatchNorm
    statistics leave 0 and 1 so that a swapped mean and variance would show."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("var']"):
            return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
        if name.endswith("scale']"):
            return (1 + rng.normal(0, 0.1, s.shape)).astype(s.dtype)
        scale = 1 / np.sqrt(np.prod(s.shape[:-1])) if name.endswith("kernel']") else 0.1
        return rng.normal(0, scale, s.shape).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
