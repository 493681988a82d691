"""One jitted train step and eval step over a Mesh with a ``data`` axis.

The batch is sharded over ``data`` and the state replicated; jit inserts the collectives, so
BatchNorm statistics are those of the global batch and the same code runs on 1 device, N
devices or many hosts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvision.layers import lowering
from jaxvision.train import guards
from jaxvision.train.ema import EmaRule
from jaxvision.layers.normalize import normalize_batch


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), ("data",))


def shard_batch(mesh: Mesh, batch: dict) -> dict:
    """Host-local numpy batch -> global arrays sharded over ``data``."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def as_task(task, label_smoothing: float = 0.0):
    """A :class:`~jaxvision.tasks.Task`; a bare class count means classification."""
    from jaxvision.tasks import Classification, Task

    if isinstance(task, Task):
        return task
    return Classification(int(task), label_smoothing)


def make_train_step(model, tx, task, label_smoothing: float = 0.0, ema_decay=None,
                    accum_steps: int = 1, norm=None, teacher=None):
    """``step(state, batch) -> (state, metric sums)``; ``task`` supplies the loss and its sums
    (an int is a classification task with that many classes and ``label_smoothing``).
    ``norm = (mean, std)`` normalises the loader's uint8 images on the device; ``ema_decay``
    is a decay (averaged every step) or a :class:`~jaxvision.train.ema.EmaRule`. With a
    ``teacher`` module, ``step(state, batch, teacher_variables)``: the teacher's eval-mode
    logits on the batch the student sees reach the loss as ``batch["teacher_logits"]``."""
    task = as_task(task, label_smoothing)
    # a bare decay: the plain rule, every step
    ema = EmaRule(float(ema_decay)) if isinstance(ema_decay, (int, float)) else ema_decay

    def micro(params, batch_stats, batch, rng):
        def loss_fn(p):
            out, upd = task.forward(model, {"params": p, "batch_stats": batch_stats}, batch,
                                    True, mutable=["batch_stats"], rngs={"dropout": rng})
            loss, sums = task.loss(out, batch)
            return loss, (upd.get("batch_stats", batch_stats), sums)

        (loss, (stats, sums)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, stats, loss, sums

    def step(state, batch, teacher_variables=None):
        batch = normalize_batch(batch, norm)
        rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
        # its own stream, so a task without batch augmentation draws the dropout it always did
        batch = task.train_batch(batch, jax.random.fold_in(step_rng, 1))
        if teacher is not None:
            out = teacher.apply(teacher_variables, batch["image"], train=False)
            batch = {**batch, "teacher_logits": jax.lax.stop_gradient(out)}
        if accum_steps == 1:
            grads, stats, loss, sums = micro(state.params, state.batch_stats, batch, step_rng)
        else:
            # micro-batches in order, BatchNorm statistics threaded through them as torch does
            split = lambda a: a.reshape(accum_steps, -1, *a.shape[1:])

            def body(carry, xs):
                g_sum, stats, l_sum, s_sum = carry
                g, stats, loss, sums = micro(state.params, stats, *xs)
                return (jax.tree.map(jnp.add, g_sum, g), stats, l_sum + loss,
                        jax.tree.map(jnp.add, s_sum, sums)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            rngs = jax.random.split(step_rng, accum_steps)
            micro_batches = jax.tree.map(split, batch)
            sums0 = jax.eval_shape(lambda: micro(state.params, state.batch_stats,
                                                 jax.tree.map(lambda a: a[0], micro_batches),
                                                 rngs[0])[3])
            sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums0)
            (g_sum, stats, l_sum, sums), _ = jax.lax.scan(
                body, (zeros, state.batch_stats, 0.0, sums0), (micro_batches, rngs))
            grads = jax.tree.map(lambda g: g / accum_steps, g_sum)
            loss = l_sum / accum_steps
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, batch_stats=stats,
                            opt_state=opt_state, rng=jax.random.key_data(rng))
        if ema is not None:
            new = new.replace(ema_params=ema.update(state.step, state.ema_params, params),
                              ema_batch_stats=ema.update(state.step, state.ema_batch_stats,
                                                         stats))
        n = batch["image"].shape[0]
        metrics = {**sums, "loss_sum": loss * n, "count": jnp.float32(n),
                   "grad_norm": optax.tree.norm(grads), "steps": jnp.float32(1)}
        return new, metrics

    return step


def make_eval_step(model, task, norm=None):
    """``step(variables, batch) -> metric sums`` of the task over the batch's valid examples
    (``norm`` as in :func:`make_train_step`)."""
    task = as_task(task)

    def step(variables, batch):
        batch = normalize_batch(batch, norm)
        return task.eval_sums(task.forward(model, variables, batch, False), batch)

    return step


def make_predict_step(model, task, norm=None):
    """``step(variables, batch) -> the task's eval-mode outputs`` on ``batch`` (what its
    ``draw`` reads; ``norm`` as in :func:`make_train_step`)."""
    task = as_task(task)

    def step(variables, batch):
        return task.forward(model, variables, normalize_batch(batch, norm), False)

    return step


def jit_steps(mesh: Mesh, train_step, eval_step, conv_lowering=None, teacher: bool = False):
    """The jitted steps; ``conv_lowering`` (a run's config field; None or "": the library's
    default) is how their convolutions lower on the CPU (``layers.lowering``). ``teacher``: the
    train step takes the teacher's variables, replicated, as a third argument."""
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    train = lowering.jit(train_step, conv_lowering, in_shardings=(repl, data) + (repl,) * teacher,
                         out_shardings=(repl, repl), donate_argnums=0)
    return train, jit_eval(mesh, eval_step, conv_lowering)


def jit_eval(mesh: Mesh, eval_step, conv_lowering=None):
    """The jitted ``eval_step(variables, batch)``: variables replicated, the batch sharded."""
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return lowering.jit(eval_step, conv_lowering, in_shardings=(repl, data), out_shardings=repl)


@jax.jit
def add_metrics(total, new):
    """The running sums of the steps' metrics (None before the first) plus this step's, with its
    ``nonfinite`` flag: one dispatch a step; op by op this was ~20 dispatches, 7 ms a step of
    the host thread that also feeds the loader."""
    new = {**new, "nonfinite": guards.nonfinite_flag(new)}
    return new if total is None else jax.tree.map(jnp.add, total, new)
