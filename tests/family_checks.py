"""Checks every model-family test makes: freezing, registry, dtype (imported by the test
files; the parity machinery is tv_parity's)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torchvision

import jaxvision as jv
from jaxvision.train import freeze, optim


def frozen(name, params, model, **kw):
    """The parameter paths ``freeze.trainable_mask`` freezes under the freeze config ``kw``."""
    cfg = freeze.default_freeze_config()
    cfg.update(kw)
    mask = freeze.trainable_mask(params, cfg, name, model)
    paths = jax.tree.leaves(freeze.param_paths(params))
    return {p for p, t in zip(paths, jax.tree.leaves(mask)) if not t}


def assert_step_keeps_frozen(name, params, model, frozen_stages):
    """One SGD step with momentum and weight decay on random values shaped like ``params``'
    last axis: every frozen leaf bitwise equal after it, every trainable one moved."""
    cfg = freeze.default_freeze_config()
    cfg.frozen_stages = frozen_stages
    rng = np.random.default_rng(0)
    real = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape[-1:]), jnp.float32),
                        params)
    trainable = freeze.trainable_mask(real, cfg, name, model)
    c = optim.default_optimizer_config()
    c.update(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.1)
    tx = optim.build_optimizer(c, 0.1, real, trainable)
    # one program, not an eager op per leaf shape
    new = jax.jit(lambda r: optax.apply_updates(
        r, tx.update(jax.tree.map(jnp.ones_like, r), tx.init(r), r)[0]))(real)
    flags = jax.tree.leaves(trainable)
    assert any(flags) and not all(flags)
    for t, a, b in zip(flags, jax.tree.leaves(real), jax.tree.leaves(new)):
        assert np.array_equal(a, b) == (not t)


def assert_registry_matches_default_weights(name):
    """Input size, resize, crop, interpolation, mean, std and training recipe of torchvision's
    DEFAULT weights."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    t = weights.transforms()
    info = jv.model_info(name)
    assert (info.crop_size, info.resize_size, info.interpolation) == (
        t.crop_size[0], t.resize_size[0], t.interpolation.value)
    assert info.input_size == (t.crop_size[0],) * 2
    assert (list(info.mean), list(info.std)) == (t.mean, t.std)
    published = info.torchvision_weights
    assert published.weights == str(weights) and published.recipe == weights.meta["recipe"]


def assert_bfloat16_compute_keeps_float32_params(name):
    model = jv.create_model(name, dtype=jnp.bfloat16)
    out, variables = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert out.dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
