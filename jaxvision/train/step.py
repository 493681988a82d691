"""One jitted train step and eval step over a Mesh with a ``data`` axis.

The batch is sharded over ``data`` and the state replicated; jit inserts the collectives, so
BatchNorm statistics are those of the global batch and the same code runs on 1 device, N
devices or many hosts.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# torchvision's reference weights for auxiliary heads (googlenet: 2 heads, inception: 1)
AUX_WEIGHTS = {2: (0.3, 0.3), 1: (0.4,)}


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), ("data",))


def shard_batch(mesh: Mesh, batch: dict) -> dict:
    """Host-local numpy batch -> global arrays sharded over ``data``."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def _loss(out, labels, num_classes, smoothing):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    ce = lambda logits: optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
    loss = ce(outs[0])
    for w, aux in zip(AUX_WEIGHTS.get(len(outs) - 1, ()), outs[1:]):
        loss = loss + w * ce(aux)
    return loss, outs[0]


def make_train_step(model, tx, num_classes: int, label_smoothing: float = 0.0,
                    ema_decay=None, accum_steps: int = 1):
    def micro(params, batch_stats, images, labels, rng):
        def loss_fn(p):
            out, upd = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                   train=True, mutable=["batch_stats"], rngs={"dropout": rng})
            loss, logits = _loss(out, labels, num_classes, label_smoothing)
            return loss, (upd.get("batch_stats", batch_stats), logits)

        (loss, (stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return grads, stats, loss, correct

    def step(state, batch):
        rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
        images, labels = batch["image"], batch["label"]
        if accum_steps == 1:
            grads, stats, loss, correct = micro(state.params, state.batch_stats, images, labels,
                                                step_rng)
        else:
            # micro-batches in order, BatchNorm statistics threaded through them as torch does
            split = lambda a: a.reshape(accum_steps, -1, *a.shape[1:])

            def body(carry, xs):
                g_sum, stats, l_sum, c_sum = carry
                g, stats, loss, correct = micro(state.params, stats, *xs)
                return (jax.tree.map(jnp.add, g_sum, g), stats, l_sum + loss, c_sum + correct), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            rngs = jax.random.split(step_rng, accum_steps)
            (g_sum, stats, l_sum, correct), _ = jax.lax.scan(
                body, (zeros, state.batch_stats, 0.0, 0), (split(images), split(labels), rngs))
            grads = jax.tree.map(lambda g: g / accum_steps, g_sum)
            loss = l_sum / accum_steps
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, batch_stats=stats,
                            opt_state=opt_state, rng=jax.random.key_data(rng))
        if ema_decay is not None:
            ema = lambda e, p: ema_decay * e + (1 - ema_decay) * p
            new = new.replace(ema_params=jax.tree.map(ema, state.ema_params, params),
                              ema_batch_stats=jax.tree.map(ema, state.ema_batch_stats, stats))
        n = labels.shape[0]
        metrics = {"loss_sum": loss * n, "correct": correct.astype(jnp.float32),
                   "count": jnp.float32(n), "grad_norm": optax.tree.norm(grads),
                   "steps": jnp.float32(1)}
        return new, metrics

    return step


def make_eval_step(model, num_classes: int):
    def step(variables, batch):
        logits = model.apply(variables, batch["image"], train=False)
        logits = (logits[0] if isinstance(logits, (tuple, list)) else logits).astype(jnp.float32)
        mask = batch["mask"].astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
        hit5 = jnp.any(top5 == batch["label"][:, None], axis=-1)
        return {"loss_sum": jnp.sum(ce * mask),
                "top1": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
                "top5": jnp.sum(hit5 * mask), "count": jnp.sum(mask)}

    return step


def jit_steps(mesh: Mesh, train_step, eval_step):
    repl = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    train = jax.jit(train_step, in_shardings=(repl, data), out_shardings=(repl, repl),
                    donate_argnums=0)
    evaluate = jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)
    return train, evaluate


def add_metrics(total, new):
    return new if total is None else jax.tree.map(jnp.add, total, new)
